"""Every lossless method on every common decoder architecture: tiny random Qwen2, Qwen3, Mistral, Gemma-3,
Phi-3 and Qwen3-MoE targets (workbench.models.tiny; Llama is tiny-random itself, covered by test_engine).

What sets each architecture apart is kept in its tiny copy: Mistral's sliding window (16 positions, shorter
than every run here, so a mask or cache that ignores it changes tokens), Gemma-3's mix of sliding and global
layers with its own norms and scaling, Phi-3's fused projections, the MoE's routed experts. Draft-model
methods draft with the same architecture under another seed.

Eager: every registered lossless method is token-identical to plain greedy decoding on every architecture and
drafts there; plain greedy itself equals the model's own argmax recomputed without a cache.
"""
from __future__ import annotations

import pytest
import torch

from workbench.config import DecodeConfig
from workbench.engine import generate
from workbench.methods import list_methods
from workbench.models import TINY_ARCH_NAMES, TINY_ARCHS, TINY_WINDOW, load_model

from .helpers import DEVICE, PROMPTS, FlatCosts

ARCHS = [a for a in TINY_ARCH_NAMES if a != "llama"]  # llama (tiny-random): test_engine
HEAD_METHODS = ("eagle", "medusa", "hydra")
LOSSLESS = [m for m in list_methods() if m.lossless and m.name != "autoregressive" and m.name not in HEAD_METHODS]
# layer_skip's "auto" may choose not to draft on a two-layer model; skipping the last layer always drafts
PARAMS = {"layer_skip": {"skip": "1", "threshold": 0.0}}
N_NEW = 32  # every run passes the sliding window: the shortest prompt (12) + 32 > TINY_WINDOW


def _target(arch: str):
    return load_model(f"tiny-random:arch={arch}", device=DEVICE)


def _draft(arch: str):
    return load_model(f"tiny-random:arch={arch}:seed=1", device=DEVICE)


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
    (on the cost model of a GPU, where drafting pays, so cost-aware methods draft too)."""
    lm = _target(arch)
    draft = _draft(arch) if method.needs_draft_model else None
    drafted = 0
    for prompt in PROMPTS[1:]:  # a repeating prompt (model-free methods find matches) and a long one
        ref = generate(lm, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=N_NEW))
        out = generate(lm, method.name, prompt, draft=draft, params=PARAMS.get(method.name),
                       decode=DecodeConfig(max_new_tokens=N_NEW), costs=FlatCosts(lm.spec))
        assert out.output_ids == ref.output_ids, (arch, method.name, prompt[:4])
        drafted += sum(st.n_draft for st in out.trace.steps)
    assert drafted > 0, (arch, method.name)
