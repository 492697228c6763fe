"""Every lossless method on every common decoder architecture: tiny random Qwen2, Qwen3, Mistral, Gemma-3,
Phi-3 and Qwen3-MoE targets (workbench.models.tiny; Llama is tiny-random itself, covered by test_engine).

What sets each architecture apart is kept in its tiny copy: Mistral's sliding window (16 positions, shorter
than every run here, so a mask or cache that ignores it changes tokens), Gemma-3's mix of sliding and global
layers with its own norms and scaling, Phi-3's fused projections, the MoE's routed experts. Draft-model
methods draft with the same model in bf16: it agrees with the target on most tokens and not on all, so runs
accept long drafts, reject some and roll back (a draft of another seed agrees on nothing: every draft would
be rejected whole, and no accepted-node or partial-rollback path would run).

Eager: every registered lossless method is token-identical to plain greedy decoding on every architecture and
drafts there; plain greedy itself equals the model's own argmax recomputed without a cache. The head methods
(eagle, eagle3, medusa, hydra, dflash, and blockwise over the medusa heads) draft with heads trained here for
a few seconds on each architecture (`arch_heads`).

Kernels: the invariant CPU kernels (workbench.kernels) keep their promise, each row bit-identical whatever the
number of rows, on the fused Phi-3 projections and the sliding-window models; a mixture of experts, whose
experts run outside the linear kernels, is refused up front in one line, before a run is recorded.

Sampling (marked `slow`): on Gemma-3, whose sliding and global layers take the two masks a sliding-window
model can need, a tree method's first sampled tokens follow the target's exact joint distribution
(chi-square, as test_engine checks it on Llama), after a prompt far longer than the window.

Compiled (marked `compiled`): plain decoding, one chain method (prompt_lookup), one tree method (recycling) and
one head method (eagle) per architecture. Compiling is what costs (tens of seconds per model on a small CPU,
and a draft model would be a second compile), so the set is chosen to run every compiled code path on each
architecture once, over the target's graphs alone: the one-token graph (plain decoding), chain verification
with rollback by length (prompt_lookup), tree verification with tree masks and depth positions in the padded
static bucket and the shape-dynamic graph (recycling's trees of up to 32 nodes), and the final and
feature-layer hidden states a head reads from the graphs with accepted tree nodes copied into place (eagle,
fused features; its drafts must be accepted, where a model-free method's may all be rejected). A draft
model on the compiled backend runs the same session code as the target (test_engine covers it on Llama).
Only one static bucket (4) is compiled here, which keeps both the static-bucket and the dynamic graph in use.
Every compiled run is compared with the eager backend's plain greedy output, which the eager tests tie to the
model's own argmax.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from store import RunStore

import workbench.backend.compiled as compiled_backend
from workbench import api, kernels
from workbench.backend import open_session
from workbench.config import ConfigError, DecodeConfig, SamplingConfig
from workbench.engine import generate
from workbench.heads import default_head_name
from workbench.methods import list_methods
from workbench.models import TINY_ARCH_NAMES, TINY_ARCHS, TINY_WINDOW, load_model
from workbench.train import TrainConfig, train

from .helpers import DEVICE, PROMPTS, FlatCosts
from .stats import chi2_pvalue, exact_joint, oracle_probs

ARCHS = [a for a in TINY_ARCH_NAMES if a != "llama"]  # llama (tiny-random): test_engine
HEAD_KINDS = ("eagle", "medusa", "hydra", "eagle3", "dflash", "pard")  # every head kind, trained per architecture
HEAD_METHODS = {kind: kind for kind in HEAD_KINDS} | {"blockwise": "medusa"}  # method -> the head kind it drafts with
LOSSLESS = [m for m in list_methods() if m.lossless and m.name != "autoregressive" and m.name not in HEAD_METHODS]
# layer_skip's "auto" may choose not to draft on a two-layer model; skipping the last layer always drafts
PARAMS = {"layer_skip": {"skip": "1", "threshold": 0.0}}
N_NEW = 32  # every run passes the sliding window: the shortest prompt (12) + 32 > TINY_WINDOW


def _target(arch: str):
    return load_model(f"tiny-random:arch={arch}", device=DEVICE)


def _draft(arch: str):
    return load_model(f"tiny-random:arch={arch}:bf16", device=DEVICE)


def _recomputed_greedy(lm, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by the model's own forward over the whole sequence each time (no cache, no mask of ours)."""
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            logits = lm.model(input_ids=torch.tensor([ids], device=lm.device), use_cache=False).logits
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_tiny_architectures_are_built_as_named():
    assert tuple(TINY_ARCHS) == TINY_ARCH_NAMES
    parts = {"qwen2": "q_proj", "qwen3": "q_norm", "mistral": "q_proj", "gemma3": "pre_feedforward_layernorm",
             "phi3": "qkv_proj", "qwen3_moe": "experts"}
    for arch in ARCHS:
        lm = _target(arch)
        assert type(lm.model).__name__ == TINY_ARCHS[arch][1]
        names = {n.rsplit(".", 1)[-1] for n, _ in lm.model.named_modules()}
        assert parts[arch] in names, arch
        assert sum(p.numel() for p in lm.model.parameters()) < 400_000, arch  # tiny: a few layers, hidden 64
        assert lm.model.config.vocab_size == load_model("tiny-random", device=DEVICE).model.config.vocab_size
    assert default_head_name(_target("qwen2"), "eagle") == "tiny-random-qwen2-eagle"  # not Llama's head
    assert _target("mistral").model.config.sliding_window == TINY_WINDOW < len(PROMPTS[0]) + N_NEW
    assert set(_target("gemma3").model.config.layer_types) == {"sliding_attention", "full_attention"}


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_greedy_is_the_models_own_argmax(arch):
    lm = _target(arch)
    for prompt in PROMPTS[:2]:
        out = generate(lm, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=N_NEW))
        assert out.output_ids == _recomputed_greedy(lm, prompt, N_NEW), arch


@pytest.mark.parametrize("method", LOSSLESS, ids=lambda m: m.name)
@pytest.mark.parametrize("arch", ARCHS)
def test_lossless_methods_equal_plain_greedy_on_every_architecture(arch, method):
    """Token identity with plain greedy on the eager backend, and proof of drafting: some step proposed a draft
    (on the cost model of a GPU, where drafting pays, so cost-aware methods draft too), and a draft model's
    drafts are accepted somewhere."""
    lm = _target(arch)
    draft = _draft(arch) if method.needs_draft_model else None
    drafted, taus = 0, []
    for prompt in PROMPTS[1:]:  # a repeating prompt (model-free methods find matches) and a long one
        ref = generate(lm, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=N_NEW))
        out = generate(lm, method.name, prompt, draft=draft, params=PARAMS.get(method.name),
                       decode=DecodeConfig(max_new_tokens=N_NEW), costs=FlatCosts(lm.spec))
        assert out.output_ids == ref.output_ids, (arch, method.name, prompt[:4])
        drafted += sum(st.n_draft for st in out.trace.steps)
        taus.append(out.summary.mean_accepted_tokens)
    assert drafted > 0, (arch, method.name)
    assert max(taus) > 1.0 or not method.needs_draft_model, (arch, method.name, taus)


@pytest.fixture(scope="module")
def arch_heads(tmp_path_factory):
    """{(arch, kind): head directory}: a head of every kind for every architecture, each trained for a few
    seconds on the target's greedy answers to the test prompts (enough to draft there; conftest's `tiny_heads`
    does the same for Llama). eagle, hydra and dflash fuse feature layers, medusa reads the final states,
    eagle3 its three layers over a draft vocabulary of 128 tokens."""
    root = tmp_path_factory.mktemp("arch-heads")
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt_ids": p}) for p in PROMPTS))

    class Heads(dict):  # each head trained the first time a test asks for it
        def __missing__(self, key):
            arch, kind = key
            out = root / f"{arch}-{kind}"
            train(TrainConfig(kind=kind, target=f"tiny-random:arch={arch}", prompts=str(prompts), samples=6,
                              max_new_tokens=N_NEW, fuse=kind in ("eagle", "hydra", "dflash"),
                              vocab_trim=128 if kind == "eagle3" else 8192, steps=40, lr=3e-3, device=DEVICE,
                              out=str(out), store=False, evaluate_prompts=0), quiet=True)
            self[key] = out
            return out

    return Heads()


def _identical_and_drafting(lm, method: str, params: dict | None, backend: str, refs: list[list[int]],
                            accepts: bool = True) -> None:
    """Token identity with `refs` on both prompts; some step drafted and, where `accepts`, a draft was accepted
    (a random model's text rarely repeats, so a model-free method may see every draft rejected)."""
    taus, drafted = [], 0
    for prompt, ref in zip(PROMPTS[1:], refs):
        out = generate(lm, method, prompt, params=params, decode=DecodeConfig(max_new_tokens=N_NEW),
                       backend=backend, costs=FlatCosts(lm.spec))
        assert out.output_ids == ref, (lm.spec, method, backend, prompt[:4])
        taus.append(out.summary.mean_accepted_tokens)
        drafted += sum(st.n_draft for st in out.trace.steps)
    assert drafted > 0, (lm.spec, method, backend)
    assert max(taus) > 1.0 or not accepts, (lm.spec, method, backend, taus)


def _eager_refs(lm) -> list[list[int]]:
    return [generate(lm, "autoregressive", p, decode=DecodeConfig(max_new_tokens=N_NEW)).output_ids
            for p in PROMPTS[1:]]


@pytest.mark.parametrize("method", HEAD_METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_heads_train_and_draft_losslessly_on_every_architecture(arch, method, arch_heads):
    lm = _target(arch)
    head = arch_heads[arch, HEAD_METHODS[method]]
    _identical_and_drafting(lm, method, {"head": str(head)}, "eager", _eager_refs(lm))


@pytest.mark.compiled
@pytest.mark.parametrize("arch", ARCHS)
def test_compiled_backend_on_every_architecture(arch, arch_heads, monkeypatch):
    """Plain, one chain, one tree and one head method on the compiled backend (module docstring: why these)."""
    monkeypatch.setenv("WORKBENCH_STATIC_T", "4")
    lm = _target(arch)
    assert compiled_backend.unsupported_reason(lm.model) is None  # compiled, not run eagerly with a warning
    refs = _eager_refs(lm)
    for prompt, ref in zip(PROMPTS[1:], refs):
        out = generate(lm, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=N_NEW), backend="compiled")
        assert out.output_ids == ref, (arch, prompt[:4])
    _identical_and_drafting(lm, "prompt_lookup", None, "compiled", refs, accepts=False)
    _identical_and_drafting(lm, "recycling", None, "compiled", refs, accepts=False)
    _identical_and_drafting(lm, "eagle", {"head": str(arch_heads[arch, "eagle"])}, "compiled", refs)


@pytest.mark.slow  # hundreds of sampled runs
def test_sampling_on_a_sliding_window_model_keeps_the_target_distribution():
    lm = _target("gemma3")
    sampling, depth, runs = SamplingConfig(temperature=1.0, top_k=2, top_p=0.9), 5, 600
    with torch.inference_mode():  # every byte once, rotated so the first token's two candidates are balanced
        prompts = [list(range(k, 256)) + list(range(k)) for k in range(0, 256, 8)]
        balance = [min(oracle_probs(lm.model(input_ids=torch.tensor([p])).logits[0, -1], sampling).values(),
                       default=0.0) for p in prompts]
    prompt = prompts[max(range(len(prompts)), key=balance.__getitem__)]
    sharp = copy.deepcopy(lm.model)  # same candidates, clearly different probabilities: rejections decide
    with torch.no_grad():
        sharp.lm_head.weight.mul_(3.0)
    draft = dataclasses.replace(lm, model=sharp, spec=f"{lm.spec}:sharpened")
    expected = exact_joint(lm.model, prompt, sampling, depth, eos=lm.eos_token_ids)
    samples, deepest = [], 0
    for seed in range(runs):
        res = generate(lm, "tree_dynamic", prompt, draft=draft, sampling=dataclasses.replace(sampling, seed=seed),
                       decode=DecodeConfig(max_new_tokens=depth), costs=FlatCosts(lm.spec))
        samples.append(tuple(res.output_ids))
        deepest = max([deepest] + [st.draft_depth for st in res.trace.steps])
    assert len(prompt) > 10 * TINY_WINDOW and deepest >= 2
    assert chi2_pvalue(samples, expected) > 1e-3


@pytest.fixture
def invariant_kernels(monkeypatch):
    """This process's kernel mode set to invariant for one test, then restored."""
    monkeypatch.setenv("WORKBENCH_KERNELS", "invariant")
    kernels.set_mode("invariant")
    yield
    monkeypatch.undo()
    kernels.set_mode(None)


def test_invariant_kernels_on_every_architecture(invariant_kernels, tmp_path):
    for arch in ARCHS:
        lm = _target(arch)
        if arch == "qwen3_moe":
            store = RunStore(tmp_path / "runs.sqlite")
            with pytest.raises(ConfigError) as err:
                api.run("prompt_lookup", "Hello", target=lm.spec, chat=False, max_new_tokens=4, store=store)
            msg = str(err.value)
            assert "\n" not in msg and "cannot make tiny-random:arch=qwen3_moe's rows bit-identical" in msg
            assert "experts (model.layers.0.mlp.experts)" in msg and "--kernels fast or aten" in msg
            assert store.list_runs() == []
            store.close()
            continue
        s = open_session("eager", lm, 256)
        try:
            s.forward(torch.tensor([PROMPTS[2]]))  # past the sliding window
            start = s.length
            for T in (2, 5, 16):
                nxt = torch.arange(3, 3 + T)[None]
                s.crop(start)
                many = s.forward(nxt)
                s.crop(start)
                ones = torch.stack([s.forward(nxt[:, i:i + 1])[-1] for i in range(T)])
                assert torch.equal(many, ones), (arch, T)
        finally:
            s.close()


# ---------------------------------------------------------------- published head layouts on every architecture

# (arch, format) -> the words of its refusal
REFUSED_IMPORTS = {("gemma3", "eagle"): "Gemma3ForCausalLM scales its embeddings by 8"}


@pytest.mark.parametrize("arch", ARCHS)
def test_heads_export_and_import_in_the_published_layouts_on_every_architecture(arch, arch_heads, tmp_path):
    """The eagle3 head trained on `arch` written as speculators and EAGLE-3, the medusa head as Medusa-1, each
    imported back: its drafts are the original's and the engine with it is token-identical to plain greedy.
    Then EAGLE-1 and Medusa-1 checkpoints built with the target's shapes (Qwen2's q/k/v biases, head_dim, kv
    heads) import and equal the reference forwards written from the published descriptions (the EAGLE-1 head
    exports and imports back identically too), or are refused in one line where the layout cannot express the
    architecture."""
    from workbench.heads import HeadError
    from workbench.heads.porting import export_head, import_head

    from .test_head_formats import _drafts, _target_run, ref_eagle1, ref_medusa, write_eagle1, write_medusa

    lm = _target(arch)
    refs = _eager_refs(lm)
    imported = tmp_path / "imported"

    def lossless(method, head):
        for prompt, ref in zip(PROMPTS[1:], refs):
            out = generate(lm, method, prompt, params={"head": str(head)}, decode=DecodeConfig(max_new_tokens=N_NEW))
            assert out.output_ids == ref, (arch, method, head.name)

    lm_head = lambda: lm.model.get_output_embeddings().weight  # noqa: E731 - Medusa-1 carries one per head
    for kind, fmt, method in (("eagle3", "speculators", "eagle3"), ("eagle3", "eagle3", "eagle3"),
                              ("medusa", "medusa", "medusa")):
        out = export_head(str(arch_heads[arch, kind]), fmt, tmp_path / fmt, lm_head=lm_head)
        back = import_head(str(out), lm, f"{arch}-{fmt}", root=imported)
        assert _drafts(lm, method, back) == _drafts(lm, method, arch_heads[arch, kind]), (arch, fmt)
        lossless(method, back)

    ids, hs, final = _target_run(lm)
    T = len(ids) - 2
    emb = lm.model.get_input_embeddings().weight.detach().float()
    lmw = lm.model.get_output_embeddings().weight.detach().float()
    src, W, c = write_eagle1(lm, tmp_path / "eagle1", steps=20, qwen2=arch == "qwen2")
    if (arch, "eagle") in REFUSED_IMPORTS:
        with pytest.raises(HeadError) as err:
            import_head(str(src), lm, f"{arch}-eagle1", root=imported)
        msg = str(err.value)
        assert REFUSED_IMPORTS[arch, "eagle"] in msg and "no place for" in msg and "\n" not in msg, msg
        assert not (imported / f"{arch}-eagle1").exists()
    else:
        head = import_head(str(src), lm, f"{arch}-eagle1", root=imported)
        got = _head_logits(lm, head, "eagle", ids, final)
        torch.testing.assert_close(got.float(), ref_eagle1(W, c, final[:T], ids[1:1 + T], emb, lmw),
                                   rtol=1e-4, atol=1e-4)
        lossless("eagle", head)
        back = import_head(str(export_head(str(head), "eagle", tmp_path / "eagle1-out")), lm, f"{arch}-eagle1-back",
                           root=imported)
        assert _drafts(lm, "eagle", back) == _drafts(lm, "eagle", head), arch
    src, W = write_medusa(lm, tmp_path / "medusa1", heads=2, steps=20)
    head = import_head(str(src), lm, f"{arch}-medusa1", root=imported)
    torch.testing.assert_close(_head_logits(lm, head, "medusa", ids, final).float(),
                               ref_medusa(W, final[:T], 2, 1), rtol=1e-4, atol=1e-4)
    lossless("medusa", head)


def test_an_eagle1_export_of_a_head_for_a_scaled_embedding_target_is_refused_in_one_line(tmp_path):
    """Gemma-3 multiplies its token embeddings by sqrt(hidden size); an EAGLE-1/2 head reads the raw rows."""
    from workbench.heads import HeadError, make_head, save_head
    from workbench.heads.porting import export_head

    lm = _target("gemma3")
    head = make_head("eagle", lm.model)
    head.config.update(embed_norm=False, final_norm=False, layer_input_norm=False)  # else refused for its norms
    save_head(head, tmp_path / "g3-eagle", lm)
    with pytest.raises(HeadError) as err:
        export_head(str(tmp_path / "g3-eagle"), "eagle", tmp_path / "out")
    msg = str(err.value)
    assert "Gemma3ForCausalLM scales its token embeddings by 8" in msg and "\n" not in msg, msg
    assert not (tmp_path / "out").exists()


def _head_logits(lm, head, kind, ids, final):
    """An imported head's first-step draft logits at every position of the text (teacher-forced)."""
    from workbench.heads import load_head

    loaded, _ = load_head(str(head), lm, kind)
    T = len(ids) - 2
    with torch.no_grad():
        if kind == "medusa":
            return torch.stack([loaded.own_logits(loaded(final[t])) for t in range(T)])
        emb = lm.model.get_input_embeddings()(ids[1:1 + T][None])
        out, _ = loaded(final[:T][None], emb, torch.arange(1, T + 1)[None])
        return lm.model.get_output_embeddings()(out[0])
