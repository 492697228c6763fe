"""Backends answer the engine's two calls the same way: forward after n cached positions, keep positions.

The compiled backend's static cache is checked against the eager DynamicCache on
the tiny model: the same logits after chains, tree blocks, rollbacks and
non-prefix tree acceptances (nodes copied into place). Lossless decoding under
both backends is tested with every method in test_engine.py.
"""
from __future__ import annotations

import logging
import os

import pytest
import torch

from workbench.api import run
from workbench.backend import check_backend, open_session
from workbench.backend import compiled as compiled_backend
from workbench.backend.profile import cost_profile, interpolate
from workbench.config import ConfigError, DecodeConfig
from workbench.kernels import plan_for
from workbench.engine import generate
from workbench.models import build_tiny_model

from .helpers import DEVICE

ATOL = 1e-4


def _ids(tokens):
    return torch.tensor([tokens], device=DEVICE)


def _tree_block():
    """[root] + 4 nodes: 1 and 2 children of the root, 3 under 1, 4 under 2 (bool (5, 5), row may see column)."""
    parents = [-1, -1, 0, 1]
    block = torch.zeros(5, 5, dtype=torch.bool)
    block[:, 0] = True
    for i, par in enumerate(parents):
        row, node = i + 1, i
        while node >= 0:
            block[row, node + 1] = True
            node = parents[node]
    return block.to(DEVICE), torch.tensor([[0, 1, 1, 2, 2]], device=DEVICE)


@pytest.mark.compiled
@torch.inference_mode()
def test_static_cache_matches_dynamic_cache(tiny):
    prompt = list(range(40, 60))
    block, depth = _tree_block()
    tree_tokens = [prompt[-1], 7, 8, 9, 10]
    logits = {}
    for backend in ("eager", "compiled"):
        s = open_session(backend, tiny, 256)
        try:
            out = []
            out.append(s.forward(_ids(prompt[:-1]), keep=1))  # prefill all but the root
            out.append(s.forward(_ids([prompt[-1], 5, 6])))  # a chain of 2 after the root
            s.crop(len(prompt) - 1)  # both rejected, root too: roll back to before the root
            # a tree after the root: keep root + node 1 + node 3 (a non-prefix path)
            out.append(s.forward(_ids(tree_tokens), positions=depth + len(prompt) - 1, block=block))
            s.keep(len(prompt) - 1, [0, 2, 4])
            assert s.length == len(prompt) + 2
            out.append(s.forward(_ids([11])))  # decode one token after the accepted path
            out.append(s.forward(_ids([12, 13, 14])))  # and a chain
            logits[backend] = out
        finally:
            s.close()
    for a, b in zip(logits["eager"], logits["compiled"]):
        assert torch.allclose(a, b, atol=ATOL), (a - b).abs().max()
    # and both equal a fresh forward over the committed sequence (root, node 1 = 8, node 3 = 10, then 11..14)
    fresh = tiny.model(input_ids=_ids(prompt + [8, 10, 11, 12, 13, 14])).logits[0]
    assert torch.allclose(logits["eager"][-1], fresh[-3:], atol=ATOL)
    assert torch.allclose(logits["compiled"][-1], fresh[-3:], atol=ATOL)


@pytest.mark.compiled
def test_a_full_static_cache_is_a_clear_error(tiny):
    s = open_session("compiled", tiny, 100)
    try:
        L = s.compiled.L
        with pytest.raises(ConfigError, match=f"holds {L} positions"):
            s.forward(torch.zeros(1, L + 1, dtype=torch.long, device=DEVICE))
    finally:
        s.close()


@pytest.mark.compiled
def test_every_forward_of_the_compiled_backend_is_compiled_after_warm_up(tiny, monkeypatch):
    """Decode steps and verification go through the compiled graphs, not the eager fallback."""
    s = open_session("compiled", tiny, 256)

    def eager(*args):
        raise AssertionError("the eager fallback ran a decode or verification forward")

    monkeypatch.setattr(s.compiled, "eager", eager)
    try:
        s.length = 10  # after the warm-up's prefill: any cached positions will do
        with torch.inference_mode():
            assert s.forward(_ids([5])).shape[0] == 1
            assert s.forward(_ids([5, 6, 7, 8])).shape[0] == 4
    finally:
        s.close()


@pytest.mark.compiled
def test_no_verification_size_compiles_a_graph_after_warm_up(monkeypatch):
    """Every size up to MAX_COMPILED_T runs a graph compiled in the warm-up: the kernel plan's row check is a
    guard of the shape-dynamic graph, so sizes past the plan's rows need a graph of their own, compiled before
    the clock starts, not tens of seconds into a run. A model of its own whose kernel plan takes 1-32 rows (the
    machine's own choice may take them all)."""
    from torch._dynamo.utils import counters

    from workbench import kernels
    from workbench.kernels import choose
    from workbench.models import load_model

    monkeypatch.setattr(choose, "fast_rows", lambda *a, **k: (frozenset(range(1, 33)), {}, ()))
    monkeypatch.setattr(kernels, "current_mode", lambda: "fast")
    lm = load_model("tiny-random:seed=5", device=DEVICE)
    s = open_session("compiled", lm, 256)
    if s.compiled.kernel_rows != frozenset(range(1, 33)):
        s.close()
        pytest.skip(f"the workbench kernel is not available here: {kernels.plan_for(lm).reason}")
    try:
        with torch.inference_mode():
            before = counters["stats"]["unique_graphs"]
            for T in (17, 32, 33, compiled_backend.MAX_COMPILED_T):
                s.length = 10
                assert s.forward(_ids(list(range(5, 5 + T)))).shape[0] == T
            assert counters["stats"]["unique_graphs"] == before, "a verification size compiled a graph mid-run"
    finally:
        s.close()


@pytest.mark.compiled
def test_sessions_of_one_model_do_not_share_a_cache(tiny, monkeypatch):
    """Target and draft may be the same model: two open compiled sessions get two static caches."""
    # the second cache is this test's own: it leaves the pool with the test, and it compiles only the one-token
    # and the dynamic graph (which graphs a cache has does not matter here)
    key = (id(tiny.model), compiled_backend.cache_len_bucket(256, tiny.max_positions), plan_for(tiny).label())
    monkeypatch.setitem(compiled_backend._POOL, key, list(compiled_backend._POOL.get(key, [])))
    monkeypatch.setenv("WORKBENCH_STATIC_T", "")
    a = open_session("compiled", tiny, 256)
    b = open_session("compiled", tiny, 256)
    try:
        assert a.compiled is not b.compiled and a.compiled.cache is not b.compiled.cache
    finally:
        a.close()
        b.close()
    c = open_session("compiled", tiny, 256)  # a closed one is reused: no third compile
    try:
        assert c.compiled in (a.compiled, b.compiled)
    finally:
        c.close()


def test_models_inductor_cannot_compile_run_eagerly_with_a_warning(tiny, caplog, monkeypatch):
    quantised = torch.ao.quantization.quantize_dynamic(build_tiny_model(), {torch.nn.Linear}, torch.qint8)
    reason = compiled_backend.unsupported_reason(quantised)
    assert "dynamically quantised linears" in reason
    assert compiled_backend.unsupported_reason(tiny.model) is None
    monkeypatch.setattr(compiled_backend, "unsupported_reason", lambda model: reason)
    with caplog.at_level(logging.WARNING):
        s = open_session("compiled", tiny, 64)
    assert type(s).__name__ == "EagerSession"
    assert "dynamically quantised linears" in caplog.text


def test_unknown_backend_is_refused():
    with pytest.raises(ConfigError, match="unknown backend 'fast'; available: eager, compiled"):
        check_backend("fast")
    with pytest.raises(ConfigError):
        generate(None, "autoregressive", [1, 2], backend="fast")


@pytest.mark.compiled
def test_run_records_backend_and_warmup_outside_the_clock(tmp_path, monkeypatch):
    """A compiled run compiles its models before its first step and records the seconds in env["warmup_s"];
    an eager run, and a compiled run whose models are compiled already, record 0."""
    from store import RunStore

    events: list[tuple] = []
    compile_graphs = compiled_backend.CompiledForward.compile

    def recording(self, progress=None):
        fresh = self.warmup_s is None  # else warm already: returns 0 at once
        seconds = compile_graphs(self, progress)
        if fresh:
            events.append(("compiled", self.lm.spec, seconds))
        return seconds

    monkeypatch.setattr(compiled_backend.CompiledForward, "compile", recording)
    monkeypatch.setattr(compiled_backend, "_POOL", {})  # as in a fresh process: nothing compiled yet
    monkeypatch.setenv("WORKBENCH_STATIC_T", "")  # the one-token and the dynamic graph: fewer to compile

    def on_step(step, _trace):
        events.append(("step", step.index))

    store = RunStore(tmp_path / "runs.sqlite")
    messages = []
    res = run("speculative", "hello hello", target="tiny-random", draft="tiny-random:bf16", chat=False,
              max_new_tokens=12, store=store, backend="compiled", progress=messages.append, on_step=on_step)
    env = store.get_run(res.run_id).env
    compiled = [e for e in events if e[0] == "compiled"]
    assert [spec for _, spec, _ in compiled] == ["tiny-random", "tiny-random:bf16"], events  # each once
    assert all(seconds > 0 for _, _, seconds in compiled) and events[2] == ("step", 0)  # before any step
    assert env["backend"] == "compiled" and env["warmup_s"] == round(sum(s for _, _, s in compiled), 3)
    assert any(m.startswith("compiling tiny-random ") for m in messages), messages
    assert any(m.startswith("compiling tiny-random:bf16 ") for m in messages), messages

    eager = run("autoregressive", "hello hello", target="tiny-random", chat=False, max_new_tokens=12, store=store,
                backend="eager")
    assert store.get_run(eager.run_id).env["backend"] == "eager"
    assert store.get_run(eager.run_id).env["warmup_s"] == 0
    assert store.baseline_for(res.run_id) is None  # an eager run is no baseline for a compiled one
    events.clear()
    base = run("autoregressive", "hello hello", target="tiny-random", chat=False, max_new_tokens=12, store=store,
               backend="compiled")
    assert [e for e in events if e[0] == "compiled"] == []  # the target was compiled by the first run
    assert store.get_run(base.run_id).env["warmup_s"] == 0
    assert store.baseline_for(res.run_id).id == base.run_id
    assert base.output_ids == res.output_ids


@pytest.mark.compiled
def test_cost_profile_per_backend_is_cached(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    calls = []
    import workbench.backend.profile as profile

    measure = profile.measure_cost
    monkeypatch.setattr(profile, "PROFILE_SIZES", (1, 2, 4))
    monkeypatch.setattr(profile, "measure_cost", lambda lm, backend, **kw: calls.append(backend) or
                        measure(lm, backend, sizes=profile.PROFILE_SIZES, repeats=1))
    a = cost_profile(tiny, "compiled")
    b = cost_profile(tiny, "compiled")
    cost_profile(tiny, "eager")
    assert a == b and calls == ["compiled", "eager"]
    assert sorted(a) == [1, 2, 4] and interpolate(a, 3) > 0
    monkeypatch.setattr(profile, "PROFILE_SIZES", (1, 2, 4, 5))  # a version measuring one more size
    assert sorted(cost_profile(tiny, "compiled")) == [1, 2, 4, 5] and calls == ["compiled", "eager", "compiled"]
    from workbench.methods.layer_skip import view_model

    cost_profile(view_model(tiny, (1,)), "eager")  # a spec holding "|"
    rows = profile.cached_profiles()
    assert {r["backend"] for r in rows} == {"compiled", "eager"} and all(r["cpu"] for r in rows)
    assert sorted(r["model"] for r in rows) == ["tiny-random", "tiny-random", "tiny-random|skip=1"]
    assert {r["device"] for r in rows} == {str(tiny.device)}
    compiled_row = next(r for r in rows if r["backend"] == "compiled")
    assert compiled_row["static"] == ",".join(map(str, compiled_backend.static_buckets()))


@pytest.mark.compiled
@torch.inference_mode()
def test_static_verification_buckets_match_eager_also_at_the_cache_end(tiny):
    """Every verification size, padded into its static bucket or not (no bucket, or no room left before the
    cache's end), gives the eager backend's logits; the padding's keys and values are never seen."""
    sizes = range(2, max(compiled_backend.static_buckets(), default=8) + 2)
    s = open_session("compiled", tiny, 256)
    e = open_session("eager", tiny, 256)
    try:
        c = s.compiled
        assert {c.bucket(T, 10) for T in sizes} - {None} == set(c.buckets)  # every bucket is exercised
        for start in (20, c.L - max(sizes) - 1):  # mid-cache, and where the larger buckets no longer fit
            prefix = [(7 * i) % 50 + 3 for i in range(start)]
            for T in sizes:
                for session in (s, e):
                    session.crop(0)
                    session.forward(_ids(prefix))
                new = [(11 * T + j) % 50 + 3 for j in range(T)]
                a, b = s.forward(_ids(new)), e.forward(_ids(new))
                assert a.shape == b.shape == (T, tiny.vocab_size)
                assert torch.allclose(a, b, atol=ATOL), (start, T, (a - b).abs().max())
                nxt = [5]  # one more token after the T: the padding's columns are behind the mask
                assert torch.allclose(s.forward(_ids(nxt)), e.forward(_ids(nxt)), atol=ATOL), (start, T)
        assert c.bucket(max(sizes), c.L - max(sizes)) is None  # no room for the bucket: the dynamic graph
    finally:
        s.close()
        e.close()


def test_static_bucket_setting_is_checked(monkeypatch):
    monkeypatch.setenv("WORKBENCH_STATIC_T", "8, 4")
    assert compiled_backend.static_buckets() == (4, 8)
    monkeypatch.setenv("WORKBENCH_STATIC_T", "")
    assert compiled_backend.static_buckets() == ()
    for bad in ("four", "1", "65"):
        monkeypatch.setenv("WORKBENCH_STATIC_T", bad)
        with pytest.raises(ConfigError, match="WORKBENCH_STATIC_T"):
            compiled_backend.static_buckets()


def test_compiled_artefacts_go_to_the_workbench_cache_unless_the_user_chose_a_place(tmp_path, monkeypatch):
    """Importing inductor writes its /tmp default into $TORCHINDUCTOR_CACHE_DIR: that is not a choice."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "wb"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    compiled_backend.compiler_settings()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "wb" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compiled_backend.compiler_settings()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


@pytest.mark.compiled
@torch.inference_mode()
@pytest.mark.parametrize("kernels", ["aten", "invariant"])
def test_few_token_graphs_read_weights_as_they_are_and_larger_ones_pre_pack(tiny, kernels, monkeypatch):
    """With ATen's linears, the one- and two-token graphs are compiled without freezing (nothing pre-packed;
    faster for a row, and inductor's disk cache can keep them); the larger static graphs pre-pack their
    weights. Pre-packing is set up once per process, by the first frozen compilation: a per-graph switch of
    the packing itself would silently turn it off (or on) for every graph. A graph whose linears run the
    workbench kernel (every static size in the invariant mode) pre-packs nothing: the kernel packs its own."""
    from torch._dynamo.utils import counters

    from workbench import kernels as kernel_modes

    monkeypatch.setenv("WORKBENCH_KERNELS", kernels)
    kernel_modes.set_mode(kernels)
    s = open_session("compiled", tiny, 300)  # a cache size of its own: fresh graphs, compiled here
    try:
        packed = {}
        for T in (1, 2, *sorted(b for b in s.compiled.buckets if b > compiled_backend.UNPACKED_MAX_T)):
            fresh = compiled_backend.CompiledForward(tiny, 512 + T)  # new code objects: compiles again
            before = counters["inductor"]["mkldnn_linear_weight_pack_matcher_count"]
            fn = fresh.one if T == 1 else fresh.buckets[T]
            ids = torch.full((1, T), 5, device=DEVICE)
            pos = torch.arange(T, device=DEVICE)[None] + 3
            fn(ids, pos, fresh.mask(3, T, None, pos))
            packed[T] = counters["inductor"]["mkldnn_linear_weight_pack_matcher_count"] > before
        assert packed[1] is False and packed[2] is False and len(packed) > 2
        if kernels == "aten":
            assert all(packed[T] for T in packed if T > 2), packed
        else:
            assert not any(packed.values()), packed
    finally:
        s.close()
        monkeypatch.undo()
        kernel_modes.set_mode(None)
