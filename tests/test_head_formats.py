"""Published head layouts in and out: EAGLE-1/2, EAGLE-3, speculators, Medusa-1.

No published checkpoint can be downloaded here, so each fixture writes one in the exact published layout
(file names, key names, dtypes, config fields; shapes from the target's config). The reference forwards
below are written from the published descriptions in plain torch and share no code with the loader; the
fixtures' weights are trained a few steps through those forwards on the target's own continuation of a
prompt, so the imported heads draft (and a misread weight shows as a failed "drafts" or a logits mismatch).
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from workbench.config import DecodeConfig
from workbench.engine import generate
from workbench.heads import HeadError, load_head
from workbench.heads.lm_head import DraftVocabLM

from .helpers import PROMPTS

PROMPT = PROMPTS[1]


# ---------------------------------------------------------------- reference forwards (published descriptions)

def rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotary(x, theta):
    """x (heads, T, d) at positions 0..T-1, rotate-half RoPE."""
    d, T = x.shape[-1], x.shape[-2]
    inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    ang = torch.arange(T).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    a, b = x.chunk(2, -1)
    return x * cos + torch.cat([-b, a], -1) * sin


def attention(x, W, p, c):
    """Causal GQA attention of a Llama layer, weights W[p + 'self_attn.{q,k,v,o}_proj.weight']."""
    T, nh, kvh = x.shape[0], c["num_attention_heads"], c["num_key_value_heads"]
    d = c["head_dim"]

    def proj(n, heads):
        y = x @ W[f"{p}self_attn.{n}_proj.weight"].T
        if f"{p}self_attn.{n}_proj.bias" in W:
            y = y + W[f"{p}self_attn.{n}_proj.bias"]
        return y.view(T, heads, d).transpose(0, 1)

    q, k, v = rotary(proj("q", nh), c["rope_theta"]), rotary(proj("k", kvh), c["rope_theta"]), proj("v", kvh)
    k, v = k.repeat_interleave(nh // kvh, 0), v.repeat_interleave(nh // kvh, 0)
    s = q @ k.transpose(1, 2) / math.sqrt(d) + torch.full((T, T), float("-inf")).triu(1)
    o = (s.softmax(-1) @ v).transpose(0, 1).reshape(T, nh * d)
    return o @ W[f"{p}self_attn.o_proj.weight"].T


def mlp(x, W, p):
    g, u = x @ W[f"{p}mlp.gate_proj.weight"].T, x @ W[f"{p}mlp.up_proj.weight"].T
    return (F.silu(g) * u) @ W[f"{p}mlp.down_proj.weight"].T


def ref_eagle1(W, c, feats, next_tokens, emb, lm):
    """EAGLE-1/2: fc([e(x_{t+1}); f_t]) -> layer 0 without input norm -> the target's LM head."""
    x = torch.cat([emb[next_tokens], feats], -1) @ W["fc.weight"].T
    if "fc.bias" in W:
        x = x + W["fc.bias"]
    h = x + attention(x, W, "layers.0.", c)
    h = h + mlp(rms(h, W["layers.0.post_attention_layernorm.weight"], c["rms_norm_eps"]), W, "layers.0.")
    return h @ lm.T  # (T, V)


def ref_eagle3(W, c, layers3, next_tokens, emb, prefix="midlayer.", before_residual=False):
    """EAGLE-3: g = fc([low; mid; high]); attention over [input_layernorm(e); hidden_norm(g)], residual g;
    logits lm_head(norm(out)) over the draft vocabulary (row i = target id i + d2t[i])."""
    eps = c["rms_norm_eps"]
    g = torch.cat(layers3, -1) @ W["fc.weight"].T
    hn = rms(g, W[prefix + "hidden_norm.weight"], eps)
    a = torch.cat([rms(emb[next_tokens], W[prefix + "input_layernorm.weight"], eps), hn], -1)
    h = (hn if before_residual else g) + attention(a, W, prefix, c)
    h = h + mlp(rms(h, W[prefix + "post_attention_layernorm.weight"], eps), W, prefix)
    return rms(h, W["norm.weight"], eps) @ W["lm_head.weight"].T  # (T, Vd)


def ref_medusa(W, h, K, L):
    """Medusa-1: head k = L blocks x + SiLU(W x + b), then its own LM head; (T, K, V)."""
    out = []
    for k in range(K):
        x = h
        for j in range(L):
            x = x + F.silu(x @ W[f"{k}.{j}.linear.weight"].T + W[f"{k}.{j}.linear.bias"])
        out.append(x @ W[f"{k}.{L}.weight"].T)
    return torch.stack(out, 1)


# ---------------------------------------------------------------- fixtures in the published layouts

def _target_run(lm, n=40):
    """The target's greedy continuation of PROMPT and its hidden states (HF indices) over the whole text."""
    ref = generate(lm, "autoregressive", PROMPT, decode=DecodeConfig(max_new_tokens=n))
    ids = torch.tensor([ref.output_ids])
    with torch.no_grad():
        out = lm.model(input_ids=ids, output_hidden_states=True)
    return ids[0], [h[0].float() for h in out.hidden_states], out.hidden_states[-1][0].float()


def layer_cfg(tcfg, **extra):
    H = tcfg.hidden_size
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
            "intermediate_size": tcfg.intermediate_size, "num_attention_heads": tcfg.num_attention_heads,
            "num_key_value_heads": tcfg.num_key_value_heads,
            "head_dim": getattr(tcfg, "head_dim", None) or H // tcfg.num_attention_heads,
            "num_hidden_layers": 1, "rms_norm_eps": tcfg.rms_norm_eps, "rope_theta": 10000.0,
            "vocab_size": tcfg.vocab_size, "max_position_embeddings": 2048, "hidden_act": "silu", **extra}


def _layer_weights(prefix, c, qkv_in, g):
    H, d = c["hidden_size"], c["head_dim"]
    nh, kvh, I = c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
    s = 0.3 / math.sqrt(qkv_in)
    return {f"{prefix}self_attn.q_proj.weight": torch.randn(nh * d, qkv_in, generator=g) * s,
            f"{prefix}self_attn.k_proj.weight": torch.randn(kvh * d, qkv_in, generator=g) * s,
            f"{prefix}self_attn.v_proj.weight": torch.randn(kvh * d, qkv_in, generator=g) * s,
            f"{prefix}self_attn.o_proj.weight": torch.randn(H, nh * d, generator=g) * 0.3 / math.sqrt(nh * d),
            f"{prefix}post_attention_layernorm.weight": 1 + 0.1 * torch.randn(H, generator=g),
            f"{prefix}mlp.gate_proj.weight": torch.randn(I, H, generator=g) / math.sqrt(H),
            f"{prefix}mlp.up_proj.weight": torch.randn(I, H, generator=g) / math.sqrt(H),
            f"{prefix}mlp.down_proj.weight": torch.randn(H, I, generator=g) * 0.3 / math.sqrt(I)}


def _train(W, names, loss_fn, steps):
    """A few Adam steps on the named tensors, through the reference forward: a fixture head that drafts."""
    params = [W[n].requires_grad_(True) for n in names]
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(W).backward()
        opt.step()
    for n in names:
        W[n] = W[n].detach()


def write_eagle3(lm, root, *, speculators=False, draft_vocab=96, steps=150, dtype=torch.bfloat16, seed=0,
                 aux=None, train=True, before_residual=False):
    """An EAGLE-3 checkpoint (SafeAILab/SpecForge layout, or speculators') for `lm`; returns (dir, weights)."""
    tcfg = lm.model.config
    H, V, N = tcfg.hidden_size, tcfg.vocab_size, tcfg.num_hidden_layers
    g = torch.Generator().manual_seed(seed)
    c = layer_cfg(tcfg, architectures=["LlamaForCausalLMEagle3"], draft_vocab_size=draft_vocab)
    ids, hs, _ = _target_run(lm)
    layers = aux or [min(2, N), N // 2, max(0, N - 3)]
    # the draft vocabulary: the tokens of the target's text first, then others, each once
    seen = list(dict.fromkeys(ids.tolist()))
    rest = [t for t in torch.randperm(V, generator=g).tolist() if t not in seen]
    vocab = torch.tensor(sorted((seen + rest)[:draft_vocab]))
    prefix = "layers.0." if speculators else "midlayer."
    W = {"fc.weight": torch.randn(H, 3 * H, generator=g) / math.sqrt(3 * H),
         prefix + "input_layernorm.weight": 1 + 0.1 * torch.randn(H, generator=g),
         prefix + "hidden_norm.weight": 1 + 0.1 * torch.randn(H, generator=g),
         "norm.weight": 1 + 0.1 * torch.randn(H, generator=g),
         "lm_head.weight": torch.randn(draft_vocab, H, generator=g) / math.sqrt(H),
         **_layer_weights(prefix, c, 2 * H, g)}
    emb = lm.model.get_input_embeddings().weight.detach().float()
    rows = torch.full((V,), -100, dtype=torch.long)
    rows[vocab] = torch.arange(draft_vocab)
    if train:
        feats, labels = [hs[i][:-2] for i in layers], rows[ids[2:]]
        _train(W, [k for k in W if not k.endswith("layernorm.weight") and "norm" not in k], lambda w: F.cross_entropy(
            ref_eagle3(w, c, feats, ids[1:-1], emb, prefix, before_residual), labels, ignore_index=-100), steps)
    W = {k: v.to(dtype) for k, v in W.items()}
    W["d2t"] = vocab - torch.arange(draft_vocab)
    t2d = torch.zeros(V, dtype=torch.bool)
    t2d[vocab] = True
    W["t2d"] = t2d
    root.mkdir(parents=True, exist_ok=True)
    if speculators:
        layer = {k: v for k, v in c.items() if k != "architectures"}
        config = {"speculators_model_type": "eagle3", "architectures": ["Eagle3Speculator"],
                  "transformer_layer_config": {**layer, "architectures": ["LlamaForCausalLM"]},
                  "draft_vocab_size": draft_vocab, "target_hidden_size": H, "norm_before_residual": before_residual,
                  "eagle_aux_hidden_state_layer_ids": layers,
                  "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                                         "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3}],
                                         "verifier": {"name_or_path": "tiny", "architectures": [type(lm.model).__name__]}}}
    else:
        config = {**c, "eagle_config": {"eagle_aux_hidden_state_layer_ids": layers}} if aux else c
    (root / "config.json").write_text(json.dumps(config))
    save_file(W, str(root / "model.safetensors"))
    return root, {k: v.float() if v.is_floating_point() else v for k, v in W.items()}, c, layers


def write_eagle1(lm, root, *, bias=True, steps=150, pickle=True, seed=0, qwen2=False):
    """An EAGLE-1/2 checkpoint (config.json + pytorch_model.bin, fp16) for `lm`; `qwen2`: a Qwen2-style layer
    (its config says so, and q/k/v carry biases without a flag)."""
    tcfg = lm.model.config
    H = tcfg.hidden_size
    g = torch.Generator().manual_seed(seed)
    c = layer_cfg(tcfg, **({} if bias else {"bias": False}))
    if qwen2:
        c.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    W = {"fc.weight": torch.randn(H, 2 * H, generator=g) / math.sqrt(2 * H), **_layer_weights("layers.0.", c, H, g)}
    if qwen2:
        for n in ("q", "k", "v"):
            W[f"layers.0.self_attn.{n}_proj.bias"] = 0.1 * torch.randn(W[f"layers.0.self_attn.{n}_proj.weight"].shape[0],
                                                                       generator=g)
    if bias:
        W["fc.bias"] = 0.01 * torch.randn(H, generator=g)
    ids, hs, final = _target_run(lm)
    emb = lm.model.get_input_embeddings().weight.detach().float()
    lmw = lm.model.get_output_embeddings().weight.detach().float()
    _train(W, [k for k in W if "norm" not in k], lambda w: F.cross_entropy(
        ref_eagle1(w, c, final[:-2], ids[1:-1], emb, lmw), ids[2:]), steps)
    W = {k: v.half() for k, v in W.items()}
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(c))
    if pickle:
        torch.save(W, str(root / "pytorch_model.bin"))
    else:
        save_file(W, str(root / "model.safetensors"))
    return root, {k: v.float() for k, v in W.items()}, c


def write_medusa(lm, root, *, heads=3, layers=1, steps=150, seed=0):
    """A Medusa-1 checkpoint (medusa_lm_head.pt + config) for `lm`."""
    tcfg = lm.model.config
    H = tcfg.hidden_size
    g = torch.Generator().manual_seed(seed)
    lmw = lm.model.get_output_embeddings().weight.detach().float()
    W = {}
    for k in range(heads):
        for j in range(layers):
            W[f"{k}.{j}.linear.weight"] = 0.02 * torch.randn(H, H, generator=g)
            W[f"{k}.{j}.linear.bias"] = torch.zeros(H)
        W[f"{k}.{layers}.weight"] = lmw.clone()
    ids, hs, final = _target_run(lm)
    T = len(ids) - heads - 1
    labels = torch.stack([ids[k + 2:k + 2 + T] for k in range(heads)], 1)  # head k: token t + k + 2
    _train(W, list(W), lambda w: F.cross_entropy(ref_medusa(w, final[:T], heads, layers).reshape(-1, lmw.shape[0]),
                                                 labels.reshape(-1)), steps)
    W = {k: v.half() for k, v in W.items()}
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"medusa_num_heads": heads, "medusa_num_layers": layers,
                                                  "base_model_name_or_path": "tiny"}))
    torch.save(W, str(root / "medusa_lm_head.pt"))
    return root, {k: v.float() for k, v in W.items()}


# ---------------------------------------------------------------- helpers

@pytest.fixture
def heads_dir(tmp_path, monkeypatch):
    d = tmp_path / "heads"
    monkeypatch.setenv("WORKBENCH_HEADS", str(d))
    return d


def _import(src, lm, name):
    from workbench.heads.porting import import_head

    return import_head(str(src), lm, name)


def _head_logits(lm, name, kind, ids, hs, final, aux=None):
    """The imported head's first-step draft logits at every position of the text (teacher-forced)."""
    head, _ = load_head(name, lm, kind)
    T = len(ids) - 2
    emb = lm.model.get_input_embeddings()(ids[1:1 + T][None])  # (1, T, H)
    pos = torch.arange(1, T + 1)[None]
    with torch.no_grad():
        if kind == "medusa":
            return torch.stack([head.own_logits(head(final[t])) for t in range(T)])
        if kind == "eagle3":
            hidden = torch.cat([final[:T]] + [hs[i][:T] for i in aux], -1)
            out, _ = head(head.committed(hidden)[None], emb, pos)
            return DraftVocabLM(head).logits(out[0])
        out, _ = head(final[:T][None], emb, pos)
        return lm.model.get_output_embeddings()(out[0])


def _runs_losslessly_and_drafts(lm, method, name, **params):
    taus = []
    for mode in ("chain", "tree") if method != "medusa" else ("tree",):
        extra = {"mode": mode} if method != "medusa" else {}
        for prompt in (PROMPT, PROMPTS[0]):
            ref = generate(lm, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=32))
            out = generate(lm, method, prompt, params={"head": name, **extra, **params},
                           decode=DecodeConfig(max_new_tokens=32))
            assert out.output_ids == ref.output_ids, (method, mode)
            taus.append(out.summary.mean_accepted_tokens)
    assert max(taus) > 1.25, (method, taus)  # it drafts, and its drafts are accepted


def _leftovers(d):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# ---------------------------------------------------------------- import: reference forward, lossless, drafts

@pytest.mark.parametrize("speculators,before", [(False, False), (True, False), (True, True)],
                         ids=["eagle3", "speculators", "speculators-norm-before-residual"])
def test_eagle3_import_equals_the_reference_forward_and_drafts(tiny, tmp_path, heads_dir, speculators, before):
    src, W, c, aux = write_eagle3(tiny, tmp_path / "src", speculators=speculators, before_residual=before)
    _import(src, tiny, "e3")
    ids, hs, final = _target_run(tiny)
    T = len(ids) - 2
    emb = tiny.model.get_input_embeddings().weight.detach().float()
    want = ref_eagle3(W, c, [hs[i][:T] for i in aux], ids[1:1 + T], emb,
                      "layers.0." if speculators else "midlayer.", before)
    got = _head_logits(tiny, "e3", "eagle3", ids, hs, final, aux)
    torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-4)
    # d2t: draft row i is target token i + d2t[i]
    lm = DraftVocabLM(load_head("e3", tiny, "eagle3")[0])
    assert lm.tokens(torch.tensor([0, 5])) == [int(W["d2t"][0]), int(5 + W["d2t"][5])]
    _runs_losslessly_and_drafts(tiny, "eagle3", "e3")


@pytest.mark.parametrize("bias,pickled,qwen2", [(True, True, False), (False, False, False), (False, False, True)],
                         ids=["vicuna-bin", "llama3-safetensors", "qwen2-biases"])
def test_eagle1_import_equals_the_reference_forward_and_drafts(tiny, tmp_path, heads_dir, bias, pickled, qwen2):
    src, W, c = write_eagle1(tiny, tmp_path / "src", bias=bias, pickle=pickled, qwen2=qwen2)
    _import(src, tiny, "e1")
    ids, hs, final = _target_run(tiny)
    T = len(ids) - 2
    emb = tiny.model.get_input_embeddings().weight.detach().float()
    lmw = tiny.model.get_output_embeddings().weight.detach().float()
    want = ref_eagle1(W, c, final[:T], ids[1:1 + T], emb, lmw)
    got = _head_logits(tiny, "e1", "eagle", ids, hs, final)
    torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-4)
    _runs_losslessly_and_drafts(tiny, "eagle", "e1")


def test_medusa_import_equals_the_reference_forward_and_drafts(tiny, tmp_path, heads_dir):
    src, W = write_medusa(tiny, tmp_path / "src", heads=3, layers=1)
    _import(src, tiny, "m1")
    ids, hs, final = _target_run(tiny)
    T = len(ids) - 2
    want = ref_medusa(W, final[:T], 3, 1)
    got = _head_logits(tiny, "m1", "medusa", ids, hs, final)
    torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-4)
    _runs_losslessly_and_drafts(tiny, "medusa", "m1")


def test_medusa_with_two_blocks_per_head_imports(tiny, tmp_path, heads_dir):
    src, W = write_medusa(tiny, tmp_path / "src", heads=2, layers=2, steps=1)
    _import(src, tiny, "m2")
    ids, hs, final = _target_run(tiny)
    got = _head_logits(tiny, "m2", "medusa", ids, hs, final)
    torch.testing.assert_close(got.float(), ref_medusa(W, final[:len(ids) - 2], 2, 2), rtol=1e-4, atol=1e-4)


@pytest.mark.compiled
def test_imported_eagle3_runs_on_the_compiled_backend(tiny, tmp_path, heads_dir):
    src, *_ = write_eagle3(tiny, tmp_path / "src")
    _import(src, tiny, "e3")
    for mode in ("chain", "tree"):
        ref = generate(tiny, "autoregressive", PROMPT, decode=DecodeConfig(max_new_tokens=24), backend="compiled")
        out = generate(tiny, "eagle3", PROMPT, params={"head": "e3", "mode": mode},
                       decode=DecodeConfig(max_new_tokens=24), backend="compiled")
        assert out.output_ids == ref.output_ids and out.summary.mean_accepted_tokens > 1.0


# ---------------------------------------------------------------- mismatches: one clear error, nothing left behind

def _edit(path, fn):
    from safetensors.torch import load_file

    W = load_file(str(path))
    fn(W)
    save_file(W, str(path))


class Payload:
    """An object a pickle can carry but weights_only loading refuses."""

    def __reduce__(self):
        return (print, ("this code ran while loading",))


@pytest.mark.parametrize("case", ["hidden", "vocab", "missing", "extra", "layer_ids", "pickle_code", "verifier"])
def test_a_mismatched_checkpoint_is_refused_in_one_line_and_leaves_nothing(tiny, tmp_path, heads_dir, case,
                                                                           capsys):
    if case in ("pickle_code",):
        src, *_ = write_eagle1(tiny, tmp_path / "src", steps=0)
        W = torch.load(str(src / "pytorch_model.bin"), weights_only=True)
        torch.save({**W, "payload": Payload()}, str(src / "pytorch_model.bin"))
        expect = "refused"
    else:
        src, *_ = write_eagle3(tiny, tmp_path / "src", speculators=case == "verifier", train=False,
                               aux=[0, 1, 7] if case == "layer_ids" else None)
        cfg = json.loads((src / "config.json").read_text())
        weights = src / "model.safetensors"
        if case == "hidden":
            cfg["hidden_size"] = 2 * cfg["hidden_size"]
            expect = "hidden size"
        elif case == "vocab":
            cfg["vocab_size"] = cfg["vocab_size"] + 8
            expect = "vocabulary size"
        elif case == "missing":
            _edit(weights, lambda W: W.pop("midlayer.hidden_norm.weight"))
            expect = "missing keys"
        elif case == "extra":
            _edit(weights, lambda W: W.update({"midlayer.self_attn.q_norm.weight": torch.ones(4)}))
            expect = "unexpected keys"
        elif case == "layer_ids":
            expect = "aux layer ids"
        else:
            cfg["speculators_config"]["verifier"]["architectures"] = ["Qwen2ForCausalLM"]
            expect = "verifier"
        (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HeadError) as err:
        _import(src, tiny, "bad")
    msg = str(err.value)
    assert expect in msg and "\n" not in msg, msg
    assert "this code ran" not in capsys.readouterr().out
    assert _leftovers(heads_dir) == []


def test_an_unreachable_hub_id_says_what_to_download_and_where(tiny, heads_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HeadError) as err:
        _import("someone/EAGLE3-not-here", tiny, None)
    msg = str(err.value)
    assert "huggingface-cli download someone/EAGLE3-not-here --local-dir" in msg and "\n" not in msg
    assert _leftovers(heads_dir) == []


# ---------------------------------------------------------------- export, and the round trip

def _drafts(lm, method, head, mode="tree"):
    """Every step's draft (tokens, parents, q) of a greedy run with `head`: what 'identical drafts' compares."""
    params = {"head": str(head), "sizing": "fixed"} | ({"mode": mode} if method != "medusa" else {})
    out = generate(lm, method, PROMPT, params=params, decode=DecodeConfig(max_new_tokens=24))
    return out.output_ids, [(s.tokens, s.parents, [round(q, 6) if q is not None else None for q in s.q])
                            for s in out.trace.steps]


def _export(ref, fmt, out, lm=None):
    from workbench.heads.porting import export_head

    return export_head(str(ref), fmt, out, lm_head=None if lm is None else lambda: lm.model.get_output_embeddings().weight)


def _layout(path, weights="model.safetensors"):
    from safetensors.torch import load_file

    W = load_file(str(path / weights))
    return json.loads((path / "config.json").read_text()), {k: (tuple(v.shape), v.dtype) for k, v in W.items()}


@pytest.mark.parametrize("fmt", ["eagle3", "speculators"])
def test_eagle3_exports_in_the_published_layout_and_imports_back_identically(tiny, tmp_path, heads_dir, fmt):
    src, *_ = write_eagle3(tiny, tmp_path / "src", speculators=fmt == "speculators", steps=60)
    first = _import(src, tiny, "first")
    out = _export("first", fmt, tmp_path / "out")
    cfg, keys = _layout(out)
    want_cfg, want_keys = _layout(src)
    assert keys == want_keys  # the same names, shapes and dtypes as the published layout
    if fmt == "speculators":
        for field in ("speculators_model_type", "architectures", "draft_vocab_size", "target_hidden_size",
                      "norm_before_residual", "eagle_aux_hidden_state_layer_ids"):
            assert cfg[field] == want_cfg[field], field
        assert cfg["speculators_config"]["algorithm"] == "eagle3"
        assert cfg["speculators_config"]["verifier"]["architectures"] == ["LlamaForCausalLM"]
        for field in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                      "head_dim", "vocab_size", "rope_theta", "rms_norm_eps", "num_hidden_layers"):
            assert cfg["transformer_layer_config"][field] == want_cfg["transformer_layer_config"][field], field
    else:
        for field in ("architectures", "draft_vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "vocab_size", "rope_theta", "rms_norm_eps",
                      "num_hidden_layers"):
            assert cfg[field] == want_cfg[field], field
        assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [2, 1, 0]
    assert "Measured acceptance" in (out / "README.md").read_text()
    again = _import(out, tiny, "again")
    for mode in ("chain", "tree"):
        assert _drafts(tiny, "eagle3", again, mode) == _drafts(tiny, "eagle3", first, mode)


@pytest.mark.parametrize("fmt", ["eagle", "medusa"])
def test_eagle1_and_medusa_export_in_their_layout_and_import_back_identically(tiny, tmp_path, heads_dir, fmt):
    if fmt == "eagle":
        src, *_ = write_eagle1(tiny, tmp_path / "src", pickle=False, steps=60)
        weights, method = "model.safetensors", "eagle"
    else:
        src, _ = write_medusa(tiny, tmp_path / "src", steps=60)
        from safetensors.torch import save_file as save

        save(torch.load(str(src / "medusa_lm_head.pt"), weights_only=True), str(src / "medusa_lm_head.safetensors"))
        weights, method = "medusa_lm_head.safetensors", "medusa"
    first = _import(src, tiny, "first")
    out = _export("first", fmt, tmp_path / "out")
    cfg, keys = _layout(out, weights)
    want_cfg, want_keys = _layout(src, weights)
    assert keys == want_keys
    for field in want_cfg:
        if field in ("architectures", "model_type", "medusa_num_heads", "medusa_num_layers", "hidden_size",
                     "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size", "rope_theta"):
            assert cfg[field] == want_cfg[field], field
    again = _import(out, tiny, "again")
    assert _drafts(tiny, method, again) == _drafts(tiny, method, first)


@pytest.mark.heads
@pytest.mark.parametrize("fmt", ["speculators", "eagle3"])
def test_a_head_trained_here_exports_and_imports_back_identically(tiny, tmp_path, fmt):
    from workbench.heads import find_head
    from workbench.heads.porting import import_head

    trained = find_head("tiny-random-eagle3", tiny, "eagle3")
    out = _export("tiny-random-eagle3", fmt, tmp_path / "out")
    cfg, keys = _layout(out)
    prefix = "layers.0." if fmt == "speculators" else "midlayer."
    assert {k for k in keys if "norm" in k} == {prefix + "input_layernorm.weight", prefix + "hidden_norm.weight",
                                               prefix + "post_attention_layernorm.weight", "norm.weight"}
    assert keys["d2t"] == ((128,), torch.int64) and keys["t2d"] == ((tiny.vocab_size,), torch.bool)
    assert keys["fc.weight"][0] == (tiny.model.config.hidden_size, 3 * tiny.model.config.hidden_size)
    readme = (out / "README.md").read_text()
    assert "workbench train --kind eagle3" in readme and "responses: 24" in readme
    back = import_head(str(out), tiny, "back", root=tmp_path / "imported")
    for mode in ("chain", "tree"):
        assert _drafts(tiny, "eagle3", back, mode) == _drafts(tiny, "eagle3", trained, mode)


@pytest.mark.heads
def test_a_medusa_head_trained_here_exports_with_the_targets_lm_head_per_head(tiny, tmp_path, monkeypatch):
    """The exported heads carry a copy of the target's LM head each, and imported back they draft what the trained
    head drafts, bit for bit, under the invariant kernels: there each head's copy (one row) and the target's head
    over all K heads' rows run the same batch-invariant kernel. (Under the fast kernels a machine may have measured
    ATen faster for one of the two row counts, and ATen's bits differ from the kernel's in the last places.)"""
    from workbench import kernels
    from workbench.heads import find_head
    from workbench.heads.porting import import_head

    monkeypatch.setenv("WORKBENCH_KERNELS", "invariant")
    kernels.set_mode("invariant")
    try:
        out = _export("tiny-random-medusa", "medusa", tmp_path / "out", lm=tiny)
        assert (out / "medusa_lm_head.pt").exists()
        back = import_head(str(out), tiny, "back", root=tmp_path / "imported")
        assert _drafts(tiny, "medusa", back) == _drafts(tiny, "medusa",
                                                        find_head("tiny-random-medusa", tiny, "medusa"))
    finally:
        monkeypatch.undo()
        kernels.set_mode(None)


@pytest.mark.heads
@pytest.mark.parametrize("head,fmt,why", [("tiny-random-eagle", "eagle", "fuses the target's layers"),
                                          ("tiny-random-hydra", "medusa", "Medusa-1 heads only"),
                                          ("tiny-random-eagle3", "medusa", "Medusa-1 heads only"),
                                          ("tiny-random-eagle", "speculators", "EAGLE-3 heads only")])
def test_a_head_a_layout_cannot_express_is_refused_in_one_line(tmp_path, head, fmt, why):
    with pytest.raises(HeadError) as err:
        _export(head, fmt, tmp_path / "out")
    assert why in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.real
@pytest.mark.parametrize("fmt", ["eagle3", "speculators", "eagle", "medusa"])
def test_published_layouts_built_for_smollm2_import_and_run_losslessly(smollm, tmp_path, heads_dir, fmt):
    """Checkpoints in the published layouts with SmolLM2-135M's shapes (random weights) on the embedded model."""
    if fmt in ("eagle3", "speculators"):
        src, *_ = write_eagle3(smollm, tmp_path / "src", speculators=fmt == "speculators", draft_vocab=2048,
                               train=False)
        method = "eagle3"
    elif fmt == "eagle":
        src, *_ = write_eagle1(smollm, tmp_path / "src", bias=False, steps=0)
        method = "eagle"
    else:
        src, _ = write_medusa(smollm, tmp_path / "src", heads=2, steps=0)
        method = "medusa"
    head = _import(src, smollm, f"smollm2-{fmt}")
    assert json.loads((head / "card.json").read_text())["origin"]["format"] == fmt
    prompt = smollm.tokenizer("The capital of France is")["input_ids"]
    ref = generate(smollm, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=16))
    for mode in (("chain", "tree") if method != "medusa" else ("tree",)):
        params = {"head": head.name} | ({"mode": mode} if method != "medusa" else {})
        out = generate(smollm, method, prompt, params=params, decode=DecodeConfig(max_new_tokens=16))
        assert out.output_ids == ref.output_ids, (fmt, mode)


@pytest.mark.parametrize("case,expect", [("medusa2", "Medusa-2"), ("mlp_speculator", "not supported"),
                                         ("no_weights", "no head weights")])
def test_layouts_not_read_are_refused_in_one_line(tiny, tmp_path, heads_dir, case, expect):
    src = tmp_path / "src"
    src.mkdir()
    cfg = {"medusa2": {"medusa_num_heads": 3, "architectures": ["MedusaModel"]},
           "mlp_speculator": {"speculators_model_type": "mlp_speculator"}, "no_weights": {"hidden_size": 64}}[case]
    (src / "config.json").write_text(json.dumps(cfg))
    if case != "no_weights":
        save_file({"x": torch.zeros(1)}, str(src / "model.safetensors"))
    with pytest.raises(HeadError) as err:
        _import(src, tiny, "bad")
    assert expect in str(err.value) and "\n" not in str(err.value)
    assert _leftovers(heads_dir) == []


def test_import_and_export_from_the_command_line(tiny, tmp_path, heads_dir, capsys):
    from workbench.cli import main

    src, *_ = write_eagle3(tiny, tmp_path / "src", train=False)
    assert main(["heads", "import", str(src), "--target", "tiny-random", "--name", "cli-e3"]) == 0
    assert "--method eagle3" in capsys.readouterr().out
    assert main(["heads", "import", str(src), "--target", "tiny-random", "--name", "cli-e3"]) == 2  # taken
    assert "already exists" in capsys.readouterr().err
    assert main(["heads", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "cli-e3")
    assert row["origin"] == "imported" and row["format"] == "eagle3" and row["source"] == str(src)
    assert main(["heads", "export", "cli-e3", "--format", "speculators", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert main(["heads", "export", "cli-e3", "--format", "medusa", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be written as medusa" in err and len(err.splitlines()) == 1
