"""The CPU kernels (workbench.kernels): the linear kernel equal to F.linear and the row-attention kernel equal to
SDPA, both bit-identical across row counts, installed into models under each mode, recorded with runs, and absent
without a compiler (a clean fallback)."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from workbench import kernels
from workbench.backend import open_session
from workbench.config import ConfigError, DecodeConfig
from workbench.engine import generate
from workbench.kernels import attention, build
from workbench.kernels import choose
from workbench.kernels.choose import MEASURED_ROWS
from workbench.kernels.linear import KernelPlan, StreamLinear, _ranges, pack
from workbench.methods import list_methods

from .helpers import BACKEND_PARAMS, PROMPTS

LOSSLESS = [m for m in list_methods() if m.lossless and m.name != "autoregressive"]


@pytest.fixture(scope="module")
def ext():
    if not build.load_extension():
        pytest.fail(f"the kernels should build on the test machine: {build.unavailable_reason()}")
    from workbench.kernels.linear import register_fake

    register_fake()
    return torch.ops.workbench_kernels.stream_linear


@pytest.fixture
def mode(monkeypatch):
    """Run a test under a kernel mode; the process's mode is restored after it."""
    def use(name):
        monkeypatch.setenv("WORKBENCH_KERNELS", name)
        return kernels.set_mode(name)

    yield use
    monkeypatch.undo()
    kernels.set_mode(None)


@pytest.mark.parametrize("N,K", [(64, 32), (193, 100), (5, 7), (48, 1), (600, 40)])
def test_kernel_equals_f_linear_and_rows_are_invariant(ext, N, K):
    g = torch.Generator().manual_seed(N * K)
    w, b = torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    p = pack(w)
    assert p.shape == (-(-N // 16), K, 16)
    x = torch.randn(16, K, generator=g)
    for T in range(1, 17):
        y = ext(x[:T], p, b, N)
        torch.testing.assert_close(y, F.linear(x[:T], w, b), rtol=1e-5, atol=1e-5)
        # the invariant property: each row's bits do not depend on how many rows came with it
        assert torch.equal(y, torch.cat([ext(x[i:i + 1], p, b, N) for i in range(T)])), T
    assert torch.equal(ext(x[:3], p, None, N), ext(x[:3], p, torch.zeros(N), N))


def test_prefetching_changes_no_bit(ext):
    """The tiles' software prefetch (per tile shape, kernels.choose) reads ahead and computes nothing: every row
    count, fp32 and bf16 weights, alone and in a group, give the same bits with and without it."""
    group = torch.ops.workbench_kernels.stream_linear_group
    g = torch.Generator().manual_seed(11)
    for dtype in (torch.float32, torch.bfloat16):
        ws = [torch.randn(n, 300, generator=g).to(dtype) for n in (200, 37)]
        ps, b = [pack(w) for w in ws], torch.randn(200, generator=g)
        x = torch.randn(16, 300, generator=g)
        for T in range(1, 17):
            plain = ext(x[:T], ps[0], b, 200)
            for ahead in ([8, 8, 8, 8], [0, 32, 0, 32], [1000]):  # per shape; a short list: none for the rest
                assert torch.equal(ext(x[:T], ps[0], b, 200, ahead), plain), (dtype, T, ahead)
                assert torch.equal(group(x[:T], ps, [], [200, 37], ahead), group(x[:T], ps, [], [200, 37])), T
    with pytest.raises(RuntimeError, match="prefetch distance cannot be negative"):
        ext(x[:2], ps[0], None, 200, [-1])


def test_each_tile_shape_prefetches_where_that_measured_faster():
    """The prefetch choice is per tile shape (1, 2, 3-4, 5+ rows) from the median gain over its row counts; the
    rows the kernel takes are judged as it will then run; the label says which row counts prefetch."""
    def timed(T, gain):  # the kernel 0.9x ATen without prefetching, `gain` x that with it
        return {"aten": 1.0, "stream": 0.9, "prefetch": 0.9 * gain, "ratio": 0.9, "prefetch_ratio": 0.9 * gain,
                "prefetch_gain": gain}

    # one row slower with it (as on the AMD test machine), 2-4 rows faster, 5+ rows mostly slower (and so slow
    # at 64 rows that the kernel loses to ATen there)
    gains = {1: 1.2, 2: 0.9, 3: 0.95, 4: 1.01, **{T: 1.05 for T in range(5, 65)}, 6: 0.5}
    measured = {T: timed(T, gains[T]) for T in (*range(1, 17), 20, 24, 32, 48, 64)}
    measured[64]["ratio"] = 1.3
    ahead = choose.prefetch_choice(measured)
    assert ahead == (0, choose.PREFETCH_AHEAD, choose.PREFETCH_AHEAD, 0)
    assert choose.kernel_ratio(2, measured[2], ahead) == pytest.approx(0.81)  # as it runs: prefetching
    assert choose.kernel_ratio(64, measured[64], ahead) == 1.3
    plan = KernelPlan("fast", frozenset(range(1, 49)), prefetch=ahead)
    assert plan.prefetch_rows() == [2, 3, 4]
    assert plan.label() == "fast (1-48), prefetch (2-4)"
    assert KernelPlan("fast", frozenset(range(1, 9)), prefetch=(0, 0, 0, 32)).label() == "fast (1-8), prefetch (5-8)"
    assert KernelPlan("fast", frozenset(range(1, 9)), prefetch=(0, 0, 0, 0)).label() == "fast (1-8)"


def test_kernel_reads_bf16_weights(ext):
    w = torch.randn(40, 24).bfloat16()
    x = torch.randn(5, 24)
    torch.testing.assert_close(ext(x, pack(w), None, 40), F.linear(x, w.float()), rtol=1e-5, atol=1e-5)


def test_an_installed_model_packs_its_weights_side_by_side_in_one_block(tiny, mode):
    """install() packs every linear into one block of memory (huge pages where the system offers them), each
    packed copy equal to pack() of its weight, 64-byte aligned, in module order, none overlapping."""
    mode("invariant")
    kernels.plan_for(tiny)
    mods = [m for m in tiny.model.modules() if isinstance(m, StreamLinear)]
    assert len(mods) > 2
    assert len({m.packed.untyped_storage().data_ptr() for m in mods}) == 1
    ends = 0
    for m in mods:
        assert torch.equal(m.packed, pack(m.weight))
        assert m.packed.data_ptr() % 64 == 0 and m.packed.data_ptr() >= ends
        ends = m.packed.data_ptr() + m.packed.numel() * m.packed.element_size()


def test_kernel_rejects_a_mismatched_weight(ext):
    with pytest.raises(RuntimeError, match="features"):
        ext(torch.randn(2, 8), pack(torch.randn(16, 9)), None, 16)


@pytest.mark.parametrize("Hq,Hkv,D", [(9, 3, 64), (4, 4, 16), (2, 1, 128)])
def test_row_attention_equals_sdpa_and_rows_are_invariant(ext, Hq, Hkv, D):
    """The attention kernel against SDPA (float, boolean and no mask), and each of T rows bit-identical to the
    one-row call at its position, over a static cache's columns with a mask or over a growing cache's prefix."""
    op = torch.ops.workbench_kernels.row_attention
    g = torch.Generator().manual_seed(0)
    S, n = 200, 150  # cache columns, cached positions before the T new rows
    k, v = torch.randn(1, Hkv, S, D, generator=g), torch.randn(1, Hkv, S, D, generator=g)
    for T in (1, 2, 5, 16):
        q = torch.randn(1, Hq, T, D, generator=g)
        seen = torch.arange(S)[None] < n + 1 + torch.arange(T)[:, None]  # (T, S): a causal chain after n
        mask = torch.zeros(1, 1, T, S).masked_fill_(~seen, torch.finfo(torch.float32).min)
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=Hq != Hkv)
        out = op(q, k, v, mask, 0.3)  # (1, T, Hq, D)
        torch.testing.assert_close(out, ref.transpose(1, 2), rtol=1e-5, atol=1e-5)
        assert torch.equal(op(q, k, v, seen[None, None], 0.3), out)  # a boolean mask: the same
        prefix = op(q, k[:, :, :n + T], v[:, :, :n + T], None, 0.3)  # no mask: causal, bottom-right
        assert torch.equal(prefix, out)
        for t in range(T):
            assert torch.equal(op(q[:, :, t:t + 1], k, v, mask[:, :, t:t + 1], 0.3)[:, 0], out[:, t]), (T, t)
            one = op(q[:, :, t:t + 1], k[:, :, :n + t + 1], v[:, :, :n + t + 1], None, 0.3)
            assert torch.equal(one[:, 0], out[:, t]), (T, t)


def test_the_attention_kernel_runs_where_the_plan_says_and_is_recorded(tiny, tiny_bf16, mode, monkeypatch):
    calls = []
    kernel = attention._kernel
    monkeypatch.setattr(attention, "_kernel", lambda *a: calls.append(a[0].shape[2]) or kernel(*a))
    mode("fast")
    plan = kernels.plan_for(tiny)
    assert plan.attention == attention.FAST_MAX_ROWS and plan.label().endswith(", row attention (1-64)")
    assert tiny.model.config._attn_implementation == attention.FAST
    s = open_session("eager", tiny, 256)
    try:
        s.forward(torch.tensor([list(range(3, 3 + 70))]))  # a prompt of more rows than the kernel takes: SDPA
        assert calls == []
        s.forward(torch.tensor([[5, 6, 7]]))  # a verification: the kernel, in every layer
        assert calls == [3] * tiny.model.config.num_hidden_layers
    finally:
        s.close()
    bf16 = kernels.plan_for(tiny_bf16)  # a model the kernel does not run (bf16): its attention as it was
    assert bf16.attention == 0 and "row attention" not in bf16.label()
    assert tiny_bf16.model.config._attn_implementation not in (attention.FAST, attention.INVARIANT)
    mode("aten")
    assert kernels.plan_for(tiny).label() == "aten"
    assert tiny.model.config._attn_implementation not in (attention.FAST, attention.INVARIANT)


def test_modes_install_and_label(tiny, mode):
    assert kernels.plan_for(tiny).mode == "fast" or mode("fast")
    mode("aten")
    assert kernels.plan_for(tiny).label() == "aten"
    mode("invariant")
    plan = kernels.plan_for(tiny)
    assert len(plan.prefetch) == 4  # one distance per tile shape, as the fast mode measured (below)
    fetching = f", prefetch ({_ranges(plan.prefetch_rows())})" if plan.prefetch_rows() else ""
    assert plan.label() == f"invariant (1-{kernels.INVARIANT_MAX_ROWS}){fetching}, row attention (all)"
    linears = [m for m in tiny.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, StreamLinear) and m.plan is plan for m in linears)
    assert tiny.model.config._attn_implementation == "workbench_invariant"
    mode("fast")
    fast = kernels.plan_for(tiny)
    assert fast.mode == "fast" and set(fast.measured) == set(MEASURED_ROWS)
    assert fast.prefetch == plan.prefetch == choose.prefetch_choice(fast.measured)  # one measurement for both
    assert {T for T in fast.rows if T in MEASURED_ROWS} == {T for T, m in fast.measured.items()
                                                           if choose.kernel_ratio(T, m, fast.prefetch) <= 1}
    assert (20 in fast.rows) == (17 in fast.rows)  # 17-20 take the decision timed at 20
    assert tiny.model.config._attn_implementation != "workbench_invariant"


def test_unknown_mode_is_one_clear_error():
    with pytest.raises(ConfigError, match="unknown kernel mode 'fastest'; available: fast, invariant, aten"):
        kernels.check_mode("fastest")


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_invariant_mode_verification_equals_one_token_forwards(tiny, mode, backend):
    """With the invariant kernels, a forward over T tokens gives each row exactly the logits that T one-token
    forwards give: no tie margin needed anywhere."""
    mode("invariant")
    s = open_session(backend, tiny, 128)
    try:
        s.forward(torch.tensor([PROMPTS[0]]))
        L = s.length
        for T in (2, 3, 5, 8, 16):
            nxt = torch.arange(3, 3 + T)[None]
            s.crop(L)
            many = s.forward(nxt)
            s.crop(L)
            ones = torch.stack([s.forward(nxt[:, i:i + 1])[-1] for i in range(T)])
            assert torch.equal(many, ones), T
    finally:
        s.close()


@pytest.mark.heads
def test_every_lossless_method_is_token_identical_with_invariant_kernels(tiny, mode, request):
    mode("invariant")
    for method in LOSSLESS:
        drafts = ([request.getfixturevalue("tiny_other"), request.getfixturevalue("tiny_bf16")]
                  if method.needs_draft_model else [None])
        for draft in drafts:
            for prompt in PROMPTS[:2]:
                ref = generate(tiny, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=24))
                out = generate(tiny, method.name, prompt, draft=draft, decode=DecodeConfig(max_new_tokens=24))
                assert out.output_ids == ref.output_ids, (method.name, getattr(draft, "spec", None))


def test_without_a_compiler_everything_runs_through_aten_and_says_so(tiny, mode, monkeypatch, caplog, tmp_path):
    mode("fast")
    monkeypatch.setattr(build, "_STATE", {})  # as in a fresh process on a machine where nothing was built
    monkeypatch.setattr(build, "build_dir", lambda: tmp_path / "kernels")
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setitem(tiny.model.__dict__, "_workbench_plans", {})
    with caplog.at_level(logging.WARNING, logger="workbench.kernels.build"):
        plan = kernels.plan_for(tiny)
        assert not build.load_extension()  # asked again: the same answer, said once
    assert plan.mode == "aten" and not plan.rows
    assert "no C++ compiler found (no-such-compiler" in plan.reason
    said = [r.getMessage() for r in caplog.records if "kernels are unavailable" in r.getMessage()]
    assert len(said) == 1 and "linears run through ATen" in said[0]
    ref = generate(tiny, "autoregressive", PROMPTS[0], decode=DecodeConfig(max_new_tokens=8))
    assert ref.summary.new_tokens == 8


def test_the_kernel_choice_is_recorded_with_each_run(tiny, mode):
    from workbench.api import run

    mode("invariant")
    result = run("autoregressive", "Hello there", target="tiny-random", max_new_tokens=4)
    from store import RunStore

    with RunStore() as store:
        row = store.get_run(result.run_id)
    plan = kernels.plan_for(tiny)
    fetching = f", prefetch ({_ranges(plan.prefetch_rows())})" if plan.prefetch_rows() else ""
    assert row.env["kernels"] == f"invariant (1-{kernels.INVARIANT_MAX_ROWS}){fetching}, row attention (all)"


def test_a_weight_changed_in_place_is_packed_again(tiny, mode):
    """A copy of an installed model whose weight is then edited (a sharpened draft, a trained copy) must not
    run the kernel on the packed copy of the old weight."""
    import copy

    mode("invariant")
    kernels.plan_for(tiny)
    model = copy.deepcopy(tiny.model)
    x = torch.randn(3, model.lm_head.in_features)
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    with torch.inference_mode():
        torch.testing.assert_close(model.lm_head(x), F.linear(x, model.lm_head.weight), rtol=1e-5, atol=1e-5)


def test_a_build_lock_left_by_a_killed_build_is_cleared(monkeypatch, tmp_path):
    """torch's builder waits forever for its lock file; one older than any build is removed first."""
    import os
    import time

    out = tmp_path / "kernels"
    out.mkdir()
    (out / "lock").touch()
    old = time.time() - build.STALE_LOCK_S - 1
    os.utime(out / "lock", (old, old))
    monkeypatch.setattr(build, "_STATE", {})
    monkeypatch.setattr(build, "build_dir", lambda: out)
    monkeypatch.setenv("CXX", "c++")
    built = []
    monkeypatch.setattr("torch.utils.cpp_extension.load", lambda **kw: built.append(kw))
    assert build.load_extension()
    assert not (out / "lock").exists() and built and built[0]["build_directory"] == str(out)


def test_a_group_of_weights_gives_each_weights_own_bits_side_by_side(ext):
    """stream_linear_group: the outputs of weights that read the same x, one after the other, each one bit for bit
    what its own call gives (with and without biases, fp32 and bf16 weights, every row count)."""
    group = torch.ops.workbench_kernels.stream_linear_group
    g = torch.Generator().manual_seed(3)
    widths = [40, 16, 70]
    for dtype in (torch.float32, torch.bfloat16):
        ws = [torch.randn(n, 24, generator=g).to(dtype) for n in widths]
        bs = [torch.randn(n, generator=g) for n in widths]
        ps = [pack(w) for w in ws]
        x = torch.randn(1, 16, 24, generator=g)
        for T in (1, 2, 3, 5, 8, 16):
            for biases in ([], bs):
                y = group(x[:, :T], ps, biases, widths)
                assert y.shape == (T * sum(widths),)  # each weight's T rows, one weight after the other
                parts = y.split([T * n for n in widths])
                for i, (p, n) in enumerate(zip(ps, widths)):
                    own = ext(x[:, :T], p, bs[i] if biases else None, n)
                    assert torch.equal(parts[i].view(1, T, n), own), (dtype, T, i)
    with pytest.raises(RuntimeError, match="share a dtype"):
        group(x, [pack(torch.randn(16, 24)), pack(torch.randn(16, 24).bfloat16())], [], [16, 16])


@pytest.mark.compiled
@torch.inference_mode()
def test_compiled_graphs_run_sibling_linears_as_one_call_with_the_same_logits(tiny, mode, monkeypatch):
    """In a compiled graph the kernel's linears that read the same input (a layer's query, key and value
    projections; its gate and up projections) become one grouped call, and the logits stay the eager backend's."""
    import torch._inductor.config

    from workbench.backend.compiled import CompiledForward, StaticSession
    from workbench.kernels import linear

    mode("invariant")  # the kernel for every row count, so every linear of every graph is one of its calls
    # tiles that prefetch for some row counts (one ahead of 32, one of 8; the one- and four-row forwards below),
    # whatever this machine measured: the group's call carries its members' distances
    ahead = (32, 0, 8, 0)
    monkeypatch.setattr(choose, "fast_rows", lambda *a, **k: (frozenset(), {}, ahead))
    monkeypatch.setitem(tiny.model.__dict__, "_workbench_plans", {})
    merged, carried = [], []
    group_siblings = linear.group_siblings
    grouped = torch.ops.workbench_kernels.stream_linear_group.default

    def count(graph):
        merged.append(group_siblings(graph))
        carried.extend(n.args[4] for n in graph.nodes if n.target is grouped)

    monkeypatch.setattr(linear, "group_siblings", count)
    s = StaticSession(CompiledForward(tiny, 512 + 11))  # a cache size of its own: graphs compiled here
    e = open_session("eager", tiny, 100)
    try:
        with torch._inductor.config.patch(fx_graph_cache=False):  # not loaded from disk: the pass runs
            for session in (s, e):
                session.forward(torch.tensor([PROMPTS[0]]))
            layers = tiny.model.config.num_hidden_layers
            for T in (1, 4):
                nxt = torch.arange(3, 3 + T)[None]
                a, b = s.forward(nxt), e.forward(nxt)
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
            # per layer: query, key and value as one call (2 merged away), gate and up as one (1 merged away)
            assert merged and all(m == 3 * layers for m in merged), merged
            assert carried and all(list(c) == list(ahead) for c in carried), carried
    finally:
        s.close()
        e.close()
