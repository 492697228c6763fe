"""The ``:int8`` option's kernels and `precision_speed`.

On CPU every Linear (the LM head too, untied from the embedding) runs through
torch's weight-only int8 kernel (`PackedInt8Linear`); elsewhere `Int8Linear`
keeps the dequantise-per-call path. An int8 draft stays lossless: speculative
decoding with it is token-identical to plain greedy. `precision_speed` times a
spec against fp32 once per machine; these tests check its bookkeeping, never a
wall-clock figure.
"""
import json

import pytest
import torch
from torch import nn

from workbench.cli import main
from workbench.config import DecodeConfig
from workbench.engine import generate
from workbench.backend import speed
from workbench.models import ModelError, load_model
from workbench.models.loaded_model import count_params, output_size
from workbench.models.quant import Int8Linear, PackedInt8Linear, can_pack, quantize_model_int8

PROMPTS = [[72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100], list(range(40, 90))]


@pytest.fixture(scope="module")
def tiny_int8():
    return load_model("tiny-random:int8", device="cpu")


@pytest.fixture
def speed_cache(tmp_path, monkeypatch):
    """precision_speed's cache in a temporary directory."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    return tmp_path / speed.CACHE_FILE


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


# ---------------------------------------------------------------- precision_speed


def test_precision_speed_measures_once_then_reads_the_cache(speed_cache, monkeypatch):
    first = speed.precision_speed("tiny-random:int8", "cpu", repeats=2)
    assert first["spec"] == "tiny-random:int8" and first["baseline"] == "tiny-random"
    assert first["precision"] == "int8" and first["rows"] == 1 and first["cached"] is False
    assert first["ms"] > 0 and first["baseline_ms"] > 0 and first["speedup"] > 0
    assert first["faster"] == (first["speedup"] >= 1.05) and first["summary"].startswith("int8: ")
    assert first["threads"] == torch.get_num_threads() and first["torch"] == torch.__version__
    assert "tiny-random:int8|cpu|" in next(iter(json.loads(speed_cache.read_text())))

    monkeypatch.setattr(speed, "_time_pair", lambda *a: pytest.fail("measured again"))
    again = speed.precision_speed("TINY-RANDOM:int8", "cpu")
    assert again == {**first, "cached": True}
    assert speed.cached_precision_speed("tiny-random:int8", "cpu") == again
    assert speed.cached_precision_speeds("cpu") == [again]
    assert speed.speed_vs_fp32(load_model("tiny-random:int8", device="cpu")) == first["summary"]


def test_precision_speed_of_fp32_measures_nothing(speed_cache, monkeypatch):
    monkeypatch.setattr(speed, "_time_pair", lambda *a: pytest.fail("measured"))
    out = speed.precision_speed("tiny-random:seed=3", "cpu")
    assert out["baseline"] == "tiny-random:seed=3" and out["speedup"] is None
    assert out["summary"] == "fp32: the reference precision"
    assert not speed_cache.exists()


def test_describe_never_measures(speed_cache, monkeypatch, tiny_int8):
    monkeypatch.setattr(speed, "_time_pair", lambda *a: pytest.fail("measured"))
    assert speed.speed_vs_fp32(tiny_int8) is None


def test_speed_labels_and_summaries():
    assert speed.baseline_spec("tiny-random:seed=2:bf16:int8") == "tiny-random:seed=2"
    assert speed.precision_label("smollm2-135m:bf16:int8") == "bf16+int8"
    assert speed.precision_label("smollm2-135m:int8") == "int8"
    assert speed.speed_summary("int8", 1.62) == "int8: 1.6x faster than fp32 per token here"
    assert speed.speed_summary("bf16", 0.5) == \
        "bf16: 0.5x fp32 per token here (slower; prefer fp32 or int8 as a draft)"
    assert "about as fast" in speed.speed_summary("int8", 1.0)
    assert "prefer fp32 as a draft" in speed.speed_summary("int8", 0.7)
    assert speed.speed_summary("bf16", 1.4, rows=16) == "bf16: 1.4x faster than fp32 per 16-token forward here"


def test_precision_speed_bad_input(speed_cache):
    with pytest.raises(ModelError, match="unknown option"):
        speed.precision_speed("tiny-random:int4")
    lm = load_model("tiny-random:int8", device="cpu")
    with pytest.raises(ModelError, match="rows and repeats"):
        speed._time_pair(lm, lm, 0, 1)


def test_models_command_measures_and_lists(speed_cache, capsys):
    assert main(["models"]) == 0
    assert "workbench models --measure" in capsys.readouterr().out
    assert main(["models", "--measure", "tiny-random:int8"]) == 0
    out = capsys.readouterr().out
    assert "Measured here" in out and "tiny-random:int8" in out and "fp32 per token here" in out
    assert main(["models", "--json"]) == 0
    rows = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert [s["spec"] for s in rows["tiny-random"]["precision_speed"]] == ["tiny-random:int8"]
    assert rows["smollm2-135m"]["precision_speed"] == []
    assert main(["models", "--measure", "tiny-random:int4"]) == 2
    assert "unknown option" in capsys.readouterr().err

