"""The ``:int8`` option's kernels.

On CPU every Linear (the LM head too, untied from the embedding) runs through
torch's weight-only int8 kernel (`PackedInt8Linear`); elsewhere `Int8Linear`
keeps the dequantise-per-call path. An int8 draft stays lossless: speculative
decoding with it is token-identical to plain greedy.
"""
import pytest
import torch
from torch import nn

from workbench.config import DecodeConfig
from workbench.engine import generate
from workbench.models import load_model
from workbench.models.loaded import count_params, output_size
from workbench.models.quant import Int8Linear, PackedInt8Linear, can_pack, quantize_model_int8

PROMPTS = [[72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100], list(range(40, 90))]


@pytest.fixture(scope="module")
def tiny_int8():
    return load_model("tiny-random:int8", device="cpu")


def _logits(model: nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def _tied_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=96, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(cfg).eval()


# ---------------------------------------------------------------- kernels


def test_cpu_int8_runs_the_int8_kernel(tiny_int8, monkeypatch):
    mods = list(tiny_int8.model.modules())
    assert not any(isinstance(m, nn.Linear) for m in mods)  # the LM head too
    packed = [m for m in mods if isinstance(m, PackedInt8Linear)]
    assert len(packed) == 2 * 7 + 1 and tiny_int8.model.lm_head in packed
    assert all(m.qweight.dtype == torch.int8 and m.scale_bf16.dtype == torch.bfloat16 for m in packed)
    calls = []
    real = torch._weight_int8pack_mm
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda *a: calls.append(a[1].dtype) or real(*a))
    _logits(tiny_int8.model, PROMPTS[0])
    assert calls == [torch.int8] * len(packed)  # every Linear went through the int8 kernel, once


def test_int8_top1_and_logits_close_to_fp32(tiny, tiny_int8):
    for ids in PROMPTS + [list(range(256)) * 2]:
        ref, low = _logits(tiny.model, ids), _logits(tiny_int8.model, ids)
        assert (ref.argmax(-1) == low.argmax(-1)).float().mean() > 0.85
        assert (ref - low).abs().mean() < 0.05 * ref.abs().mean()
    assert count_params(tiny_int8.model) == count_params(tiny.model)


def test_packed_linear_matches_linear():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48, bias=True)
    q = PackedInt8Linear.from_linear(lin)
    x = torch.randn(2, 5, 64)  # (B, T, in)
    with torch.no_grad():
        ref = lin(x)
        out = q(x)
        assert out.shape == (2, 5, 48) and out.dtype == torch.float32
        assert (out - ref).abs().max() < 0.03 * ref.abs().max()
        for dtype in (torch.bfloat16, torch.float16):
            assert q(x.to(dtype)).dtype == dtype


def test_width_the_kernel_cannot_take_keeps_int8linear():
    assert can_pack(64) and not can_pack(60)
    with pytest.raises(ValueError, match="multiple|% 16"):
        PackedInt8Linear.from_linear(nn.Linear(60, 8))
    model = nn.Sequential(nn.Linear(60, 32), nn.Linear(32, 8))
    assert quantize_model_int8(model, "cpu") == 2
    assert type(model[0]) is Int8Linear and type(model[1]) is PackedInt8Linear


def test_tied_head_is_untied_and_quantised():
    model = _tied_llama()
    emb_before = model.get_input_embeddings().weight.detach().clone()
    ids = [1, 5, 9, 30, 60, 90, 2, 7]
    ref, n_params = _logits(model, ids), count_params(model)
    quantize_model_int8(model, "cpu")
    head = model.get_output_embeddings()
    assert isinstance(head, PackedInt8Linear) and head.tied_to_input
    assert not model.config.tie_word_embeddings
    emb = model.get_input_embeddings()
    assert isinstance(emb, nn.Embedding) and emb.weight.dtype == torch.float32
    assert torch.equal(emb.weight, emb_before)  # the input embedding keeps its float weight
    assert count_params(model) == n_params and output_size(model) == 96
    low = _logits(model, ids)
    assert (ref.argmax(-1) == low.argmax(-1)).float().mean() >= 0.75
    assert (ref - low).abs().mean() < 0.05 * ref.abs().mean()


def test_other_devices_keep_the_weight_only_path():
    """cuda/mps get Int8Linear (dequantise per call) and a float LM head; checked here without a GPU."""
    model = _tied_llama()
    ids = [1, 5, 9, 30]
    ref = _logits(model, ids)
    assert quantize_model_int8(model, "cuda") == 7
    assert not any(isinstance(m, PackedInt8Linear) for m in model.modules())
    assert isinstance(model.lm_head, nn.Linear) and model.config.tie_word_embeddings
    assert (ref.argmax(-1) == _logits(model, ids).argmax(-1)).float().mean() >= 0.75


# ---------------------------------------------------------------- an int8 draft is lossless


@pytest.mark.parametrize("method", ["speculative", "tree_dynamic"])
def test_int8_draft_is_token_identical_to_greedy(tiny, tiny_int8, method):
    for prompt in PROMPTS:
        ref = generate(tiny, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=32))
        out = generate(tiny, method, prompt, draft=tiny_int8, decode=DecodeConfig(max_new_tokens=32))
        assert out.output_ids == ref.output_ids
        assert out.summary.accepted_draft_tokens > 0
