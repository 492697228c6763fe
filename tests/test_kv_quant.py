"""The int8/int4 quantised KV cache (KIVI; workbench.kv_quant, workbench.backend.quantized).

Known answers of the quantiser and the int4 packing; the cache holds integers, scales and a residual and
nothing else (the memory note counts exactly those); the attention over it equals the attention over its
dequantised rows; rollback below the quantised boundary; drafting (a chain and a tree) over the quantised
cache equals plain decoding over it token for token (a sliding-window model too), and needs the session's
extra quantised copies to do so; an extreme setting diverges from the uncompressed baseline; bad knobs fail
with one line.
"""
import pytest
import torch

from workbench import kv_cache
from workbench.backend.eager import EagerSession
from workbench.backend.quantized import QuantizedSession
from workbench.config import ConfigError, DecodeConfig, KVConfig
from workbench.engine import generate
from workbench.kv_quant import QuantizedLayer, dequantise, pack4, quantise, unpack4

from .helpers import PROMPTS

DECODE = DecodeConfig(max_new_tokens=48)


# ---------------------------------------------------------------- the quantiser

def test_quantise_known_answers_and_error_bound_per_bits():
    x = torch.arange(16, dtype=torch.float32)[None] * 0.5 - 1.0  # (1, 16): -1.0 .. 6.5, steps of 0.5
    codes, scale, zero = quantise(x, 4)  # 15 steps over 7.5: scale 0.5, zero -1, codes 0..15 exactly
    assert scale.item() == 0.5 and zero.item() == -1.0 and codes.dtype == torch.uint8 and codes.shape == (1, 8)
    assert unpack4(codes).tolist() == [list(range(16))]
    assert torch.equal(dequantise(codes, scale, zero, 4), x)
    const = torch.full((2, 6), 3.25)
    assert torch.equal(dequantise(*quantise(const, 8), 8), const)  # a constant group comes back exactly
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, 32, generator=g) * 3
    for bits in (8, 4):
        codes, scale, zero = quantise(x, bits)
        err = (dequantise(codes, scale, zero, bits) - x).abs()
        step = (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / (2 ** bits - 1)
        assert (err <= step / 2 + 1e-5).all(), bits  # half a step per element
        assert err.max() > step.max() / 4  # and not exact: the codes really have 2^bits levels


def test_int4_packs_two_codes_per_byte_and_unpacks_them():
    assert pack4(torch.tensor([1, 2, 15, 0], dtype=torch.uint8)).tolist() == [0x21, 0x0F]
    q = torch.randint(0, 16, (3, 5, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    packed = pack4(q)
    assert packed.shape == (3, 5, 5) and packed.dtype == torch.uint8
    assert torch.equal(unpack4(packed), q)


# ---------------------------------------------------------------- the cache layer

def _filled_layer(bits=4, group=4, residual=2, rows=19, seed=0):
    """A layer fed `rows` rows one forward at a time after a prompt of 7 (so groups are quantised between)."""
    g = torch.Generator().manual_seed(seed)
    k, v = torch.randn(1, 2, rows, 8, generator=g), torch.randn(1, 2, rows, 8, generator=g)
    layer = QuantizedLayer(bits, group, residual)
    seen_k, _ = layer.update(k[:, :, :7], v[:, :, :7])
    for i in range(7, rows):
        seen_k, seen_v = layer.update(k[:, :, i:i + 1], v[:, :, i:i + 1])
    return layer, k, v, seen_k, seen_v


def test_the_layer_quantises_what_leaves_the_window_and_holds_nothing_else():
    layer, k, v, seen_k, seen_v = _filled_layer()
    # 18 rows were cached before the last update: quantised while residual 2 + group 4 or more sat in full precision
    assert layer.quantised == 16 and layer.keys.shape[-2] == 3 and layer.get_seq_length() == 19
    assert torch.equal(seen_k[:, :, 16:], k[:, :, 16:]) and torch.equal(seen_v[:, :, 16:], v[:, :, 16:])
    assert not torch.equal(seen_k[:, :, :16], k[:, :, :16])
    assert (seen_k[:, :, :16] - k[:, :, :16]).abs().max() < 0.6  # int4 over a group's range
    assert layer.k_codes.dtype == torch.uint8 and layer.k_codes.shape == (1, 2, 4, 8, 2)  # (B, H, groups, d, g/2)
    assert layer.v_codes.shape == (1, 2, 16, 2, 2)  # (B, H, rows, d / 4, 4 / 2)
    tensors = [t for t in vars(layer).values() if isinstance(t, torch.Tensor)]  # every tensor the layer keeps
    assert layer.nbytes() == sum(t.numel() * t.element_size() for t in tensors)
    float_rows = sum(t.shape[-2] for t in tensors if t.is_floating_point() and t.shape[-1] == 8)
    assert float_rows == 2 * 3  # the residual keys and values only: no float copy of the quantised rows
    assert layer.full_bytes() == 2 * 2 * 8 * 19 * 4


@pytest.mark.parametrize("cut", [18, 16, 13, 5, 0])
def test_rollback_below_the_residual_keeps_what_the_attention_saw(cut):
    layer, _, _, seen_k, seen_v = _filled_layer()
    layer.truncate(cut)
    assert layer.get_seq_length() == cut and layer.quantised <= cut and layer.quantised % 4 == 0
    nk, nv = layer.update(torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8))
    assert torch.allclose(nk[:, :, :cut], seen_k[:, :, :cut], atol=1e-6)
    assert torch.allclose(nv[:, :, :cut], seen_v[:, :, :cut], atol=1e-6)


@pytest.mark.parametrize("start", [16, 14, 9])
def test_keep_rows_below_the_residual_copies_the_accepted_rows_into_place(start):
    layer, _, _, seen_k, _ = _filled_layer()
    offsets = [0, 2, 1]
    layer.keep_rows(start, offsets)
    assert layer.get_seq_length() == start + 3
    nk, _ = layer.update(torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8))
    want = torch.cat([seen_k[:, :, :start], seen_k[:, :, [start + o for o in offsets]]], dim=-2)
    assert torch.allclose(nk[:, :, :start + 3], want, atol=1e-6)


# ---------------------------------------------------------------- the session

def test_the_quantised_session_attends_over_its_dequantised_rows(tiny):
    """Quantising only changes the stored values: the next logits equal an ordinary cache's filled with the
    dequantised keys/values (the same positions, the same mask)."""
    kv = KVConfig(bits=4, group=8, residual=8)
    prompt = torch.tensor([PROMPTS[2]])  # (1, 50)
    small = QuantizedSession(tiny.model, kv)
    small.forward(prompt)
    small.forward(torch.tensor([[5]]))  # the prompt's rows leave the window: 40 quantised, 10 in the residual
    assert small.cache.layers[0].quantised == 40 and small.length == 51
    ref = EagerSession(tiny.model)
    for layer, mine in zip(ref.cache.layers, small.cache.layers):
        old_k, old_v = mine._dequantised()
        layer.update(torch.cat([old_k, mine.keys], dim=-2), torch.cat([old_v, mine.values], dim=-2))
    ref.length = 51
    nxt = torch.tensor([[7, 8, 9]])  # (1, 3)
    got, want = small.forward(nxt), ref.forward(nxt)  # (3, V) each
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert kv_cache.cache_len(small.cache) == 54


@pytest.mark.parametrize("hidden", [False, True])
def test_a_block_forward_sees_each_group_as_one_token_forwards_would(tiny, hidden):
    """Six tokens in one forward, across the point where a residual group leaves the window, give the logits
    (and hidden states) of six one-token forwards: the later queries see that group quantised."""
    kv = KVConfig(bits=4, group=8, residual=8)
    block, single = QuantizedSession(tiny.model, kv), QuantizedSession(tiny.model, kv)
    for s in (block, single):
        s.forward(torch.tensor([PROMPTS[2]]))  # (1, 50)
        s.forward(torch.tensor([[5]]))  # 40 rows quantised, 11 in the residual
    nxt = torch.tensor([[7, 8, 9, 10, 11, 12]])  # positions 51..56: rows 40-47 leave the window at 56
    assert block._crossing(56) == 1
    got = block.forward(nxt, hidden=hidden)
    want = [single.forward(nxt[:, i:i + 1], hidden=hidden) for i in range(6)]
    if hidden:
        assert torch.allclose(got[1], torch.cat([w[1] for w in want]), atol=1e-4)
        got, want = got[0], [w[0] for w in want]
    want = torch.cat(want)  # (6, V)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert single.cache.layers[0].quantised == 48 and block.cache.layers[0].quantised == 40  # flushed later
    plain_view = QuantizedSession(tiny.model, kv)
    plain_view.forward(torch.tensor([PROMPTS[2]]))
    plain_view.forward(torch.tensor([[5]]))
    plain_view._crossing = lambda last: 0  # without the extra copy the last query differs
    assert (plain_view.forward(nxt)[-1] - want[-1]).abs().max() > 1e-2


def test_the_memory_note_counts_the_stored_tensors(tiny):
    kv = KVConfig.parse("int8:group=8,residual=4")
    out = generate(tiny, "autoregressive", PROMPTS[2], decode=DECODE, kv=kv)
    note = next(n for n in out.trace.notes if n["kind"] == "kv_compression")
    assert note["policy"] == "int8" and note["positions"] == 50 + 48 - 1
    cfg = tiny.model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    per_row = 2 * cfg.num_key_value_heads * d * 4  # keys + values, float32
    assert note["uncompressed_bytes"] == per_row * note["positions"] * cfg.num_hidden_layers
    # int8 codes (a byte a value), float32 scale and zero per key group of 8 rows and per value group of 8 channels
    q, r = note["quantised_positions"], note["positions"] - note["quantised_positions"]
    heads = cfg.num_key_value_heads
    layer = heads * (q * d + q // 8 * d * 8 + q * d + q * (d // 8) * 8 + r * d * 8)
    assert note["cache_bytes"] == layer * cfg.num_hidden_layers
    assert note["saved_fraction"] == pytest.approx(1 - note["cache_bytes"] / note["uncompressed_bytes"], abs=1e-4)
    assert out.trace.lossy == [kv.describe()] and "quantisation" in note["text"]


# ---------------------------------------------------------------- decoding over it

QUANT = [KVConfig(bits=4), KVConfig(bits=4, group=8, residual=8), KVConfig(bits=8, group=8, residual=8)]


@pytest.mark.parametrize("kv", QUANT, ids=[k.text() for k in QUANT])
def test_drafting_over_the_quantised_cache_equals_plain_decoding_over_it(tiny, tiny_bf16, kv):
    """A chain (speculative) and a tree (tree_static), both drafting: token-identical to plain decoding over the
    same quantised cache (the residual is deeper than their drafts)."""
    for prompt in (PROMPTS[0], PROMPTS[2]):
        plain = generate(tiny, "autoregressive", prompt, decode=DECODE, kv=kv)
        for method in ("speculative", "tree_static"):
            out = generate(tiny, method, prompt, draft=tiny_bf16, decode=DECODE, kv=kv)
            assert out.output_ids == plain.output_ids, (method, kv.text())
            assert out.summary.accepted_draft_tokens > 10 and out.trace.lossy == [kv.describe()]


def test_drafting_over_the_quantised_cache_of_a_sliding_window_model_equals_plain_decoding_over_it():
    """Gemma 3's mixed window and full layers: the extra copies get the window in the mask too."""
    from workbench.models import load_model

    target, draft = load_model("tiny-random:arch=gemma3"), load_model("tiny-random:arch=gemma3:bf16")
    kv = KVConfig(bits=4, group=8, residual=8)
    plain = generate(target, "autoregressive", PROMPTS[2], decode=DECODE, kv=kv)
    for method in ("speculative", "tree_static"):
        out = generate(target, method, PROMPTS[2], draft=draft, decode=DECODE, kv=kv)
        assert out.output_ids == plain.output_ids and out.summary.accepted_draft_tokens > 10, method


def test_without_the_extra_quantised_copies_a_drafting_run_would_differ(tiny, tiny_bf16, monkeypatch):
    """What the previous test relies on: where a group leaves the window inside a verified block, seeing it
    in full precision there changes the output on this model."""
    kv = KVConfig(bits=4)
    plain = generate(tiny, "autoregressive", PROMPTS[2], decode=DECODE, kv=kv)
    monkeypatch.setattr(QuantizedSession, "_crossing", lambda self, last: 0)
    out = generate(tiny, "speculative", PROMPTS[2], draft=tiny_bf16, decode=DECODE, kv=kv)
    assert out.output_ids != plain.output_ids


def test_an_extreme_setting_diverges_from_the_uncompressed_baseline(tiny):
    ref = generate(tiny, "autoregressive", PROMPTS[2], decode=DECODE)
    mild = generate(tiny, "autoregressive", PROMPTS[2], decode=DECODE, kv=KVConfig(bits=8))
    coarse = generate(tiny, "autoregressive", PROMPTS[2], decode=DECODE, kv=KVConfig.parse("int4:group=64,residual=0"))
    assert mild.output_ids == ref.output_ids
    agree = sum(a == b for a, b in zip(coarse.output_ids, ref.output_ids))
    assert agree < len(ref.output_ids) * 0.75, agree


# ---------------------------------------------------------------- the knob

def test_the_quantised_knob_round_trips_and_refuses_bad_values():
    for text, want in (("int8", KVConfig(bits=8)),
                       ("int4:group=16,residual=0", KVConfig(bits=4, group=16, residual=0))):
        kv = KVConfig.parse(text)
        assert kv == want and kv.active and kv.quantised and KVConfig.parse(kv.text()) == kv
    assert KVConfig.parse("int4").text() == "int4:group=32,residual=32"
    for text in ("int3", "int4:group=3", "int4:group=0", "int8:group=x", "int4:residual=-1", "int8:budget=0.5",
                 "h2o:group=8", "int8:bits=4", "streaming:residual=4"):
        with pytest.raises(ConfigError) as exc:
            KVConfig.parse(text)
        assert "\n" not in str(exc.value), text
    with pytest.raises(ConfigError, match="does not combine"):
        KVConfig("h2o", bits=8)


def test_the_cli_refuses_bad_quantised_settings_with_exit_2(tiny, capsys):
    from workbench.cli import main

    for flag in (["--kv", "int4:group=3"], ["--kv", "int8", "--backend", "compiled"]):
        assert main(["run", "-t", "tiny-random", "-p", "hi", "--no-log", *flag]) == 2, flag
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and ("group" in err or "eager" in err), err
    with pytest.raises(ConfigError, match="eager backend only"):
        generate(tiny, "autoregressive", PROMPTS[0], decode=DECODE, kv=KVConfig(bits=8), backend="compiled")
