"""Drafter heads: small modules that draft from the target's own hidden states.

Every head reuses the target's token embedding, and its LM head unless it has
its own (an EAGLE-3 head's over its draft vocabulary; an imported Medusa-1
head's per head), and drafts the tokens after the *root* (the last committed
token) from h_t, the target's final hidden state at the position before the
root (t + 1 is the root's position; EAGLE-3: three of its layers' states there):

- MedusaHeads (Medusa-1; Cai et al. 2024): K residual blocks h + SiLU(W_k h);
  head k predicts token t + k + 2 from h_t alone (the target's own head predicts
  t + 1, the root). Zero-initialised W_k, so an untrained head repeats the target.
- HydraHeads (Hydra; Ankner et al. 2024): sequentially dependent heads. Head k
  also sees the tokens before the one it predicts, through a residual
  recurrence z_k = z_{k-1} + W2_k SiLU(W1_k [z_{k-1}; e(x_{t+k+1})]), z_{-1} = h_t,
  so every branch of a tree gets its own continuation.
- EagleHead (EAGLE; Li et al. 2024): one decoder layer over the feature
  sequence. Position t reads [f_t; e(x_{t+1})] (feature and the token it
  produced; the embedding RMS-normalised first, as EAGLE-3 does, because a
  small model's embeddings can be an order of magnitude smaller than its
  final features), fc -> a Llama-style decoder layer (initialised from the target's
  own top layer when the architectures match) -> final norm, and predicts
  f_{t+1}, whose LM-head logits draft x_{t+2}. Drafting continues on its own
  predicted features, with a KV cache over the committed positions. An
  imported EAGLE-1/2 head is the same module without the embedding norm, the
  layer's input norm and the final norm (config flags), as published.
- Eagle3Head (EAGLE-3; Li et al. 2025): the published architecture. fc maps
  three target layers' states [low; mid; high] to h; the layer's attention
  reads [input_layernorm(e(x_{t+1})); hidden_norm(h)] (2H wide) with the
  residual from h; its own norm + LM head over a draft vocabulary, whose row i
  is target token i + d2t[i]. Drafting feeds back the layer's pre-norm output.

Fused features (EAGLE-3; any kind, `feature_layers` in the config): a committed
position's h_t is the target's final hidden state plus a learned projection of
a low and a middle layer's outputs (RMS-normalised; zero-initialised, so
training starts from the plain head): `committed(hidden)`. A small model's top
layer has little left but its next token; the lower layers still carry the
context a guess further ahead needs.

Vocabulary trimming (VocabTrim / FR-Spec): a head may carry `vocab`, the ids
of the k tokens it may propose (the most frequent in the target's own
outputs); its logits are then computed over those rows of the LM head only.
Verification stays lossless: q is the trimmed distribution and a token outside
it is never proposed.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .formats import rope_of


class FeatureFuse(nn.Module):
    """f + W [norm_1(l_1); ...; norm_k(l_k)]: the final hidden state f plus a projection of k other layers'
    outputs, each RMS-normalised (a middle layer's residual stream is far larger than f); W starts at zero."""

    def __init__(self, hidden: int, k: int, eps: float) -> None:
        super().__init__()
        self.hidden = hidden
        self.norms = nn.ModuleList(RMSNorm(hidden, eps) for _ in range(k))
        self.proj = nn.Linear(k * hidden, hidden)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(..., H (1 + k)) -> (..., H)."""
        f, *layers = states.split(self.hidden, dim=-1)
        return f + self.proj(torch.cat([n(x) for n, x in zip(self.norms, layers)], dim=-1))


class HeadBase(nn.Module):
    """What every head shares: its kind, its config (saved in the card), an optional trimmed vocabulary, and
    optional fused features (`feature_layers` in the config)."""

    kind = ""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.register_buffer("vocab", torch.zeros(0, dtype=torch.long), persistent=True)  # empty: full vocabulary
        # heads saved before fused features have no "feature_layers": they read the final states alone
        layers = config.get("feature_layers") or []
        self.fuse = FeatureFuse(config["hidden_size"], len(layers), float(config.get("eps", 1e-6))) if layers else None

    @property
    def fused(self) -> bool:
        """Whether the head reads the target's feature layers too (the engine's hidden="layers")."""
        return self.fuse is not None

    @property
    def layers_wanted(self) -> bool | tuple[int, ...]:
        """What the drafter asks the engine for besides the final states (`Drafter.wants_feature_layers`)."""
        return self.fused

    def committed(self, hidden: torch.Tensor) -> torch.Tensor:
        """The feature h_t of committed positions from the target's hidden states: (..., H), or with fused
        features (..., H (1 + k)) as the backends' hidden="layers" gives them -> (..., H)."""
        return self.fuse(hidden) if self.fuse is not None else hidden

    def set_vocab(self, ids: torch.Tensor | None) -> None:
        dev = self.vocab.device
        self.vocab = torch.zeros(0, dtype=torch.long, device=dev) if ids is None else ids.to(dev, torch.long).sort().values

    @property
    def trimmed(self) -> bool:
        return self.vocab.numel() > 0


class ResBlock(nn.Module):
    """h + SiLU(W h + b), W zero-initialised (Medusa's residual block)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + F.silu(self.linear(h))


class MedusaHeads(HeadBase):
    """K heads of `layers` residual blocks each (1 when trained here); an imported Medusa-1 head also has each
    head's own LM head (`own_lm_head`, the published layout), else the target's serves every head."""

    kind = "medusa"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        H, L = config["hidden_size"], int(config.get("layers", 1))
        self.blocks = nn.ModuleList(ResBlock(H) if L == 1 else nn.Sequential(*(ResBlock(H) for _ in range(L)))
                                    for _ in range(config["heads"]))
        self.lm_heads = nn.ModuleList(nn.Linear(H, config["vocab_size"], bias=False) for _ in range(config["heads"])) \
            if config.get("own_lm_head") else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., H) final hidden states -> (..., K, H) features; head k's LM-head logits draft token t + k + 2."""
        return torch.stack([blk(h) for blk in self.blocks], dim=-2)

    def own_logits(self, feats: torch.Tensor) -> torch.Tensor | None:
        """(K, H) features -> (K, V) logits from each head's own LM head; None: the target's LM head serves."""
        if self.lm_heads is None:
            return None
        return torch.stack([lm(f) for lm, f in zip(self.lm_heads, feats)])


class HydraHeads(HeadBase):
    kind = "hydra"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        H = config["hidden_size"]
        self.inp = nn.ModuleList(nn.Linear(2 * H, H) for _ in range(config["heads"]))
        self.out = nn.ModuleList(nn.Linear(H, H) for _ in range(config["heads"]))
        for lin in self.out:  # an untrained head passes its input through
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def step(self, k: int, z: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Head k: state z_{k-1} (..., H) and the embedding of the token before its target -> z_k (..., H)."""
        return z + self.out[k](F.silu(self.inp[k](torch.cat([z, emb], dim=-1))))

    def forward(self, h: torch.Tensor, embs: torch.Tensor) -> torch.Tensor:
        """Teacher-forced: h (..., H) and embs (..., K, H) of x_{t+1..t+K} -> (..., K, H) features z_0..z_{K-1}."""
        z, out = h, []
        for k in range(len(self.inp)):
            z = self.step(k, z, embs[..., k, :])
            out.append(z)
        return torch.stack(out, dim=-2)


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class DecoderLayer(nn.Module):
    """A Llama-style pre-norm decoder layer (GQA attention with RoPE, SwiGLU MLP) with an explicit KV cache."""

    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        H, nh, kvh, d = c["hidden_size"], c["heads_q"], c["heads_kv"], c["head_dim"]
        A = c.get("attn_in", H)  # the attention's input width (EAGLE-3: 2H, the embedding beside the feature)
        self.nh, self.kvh, self.d = nh, kvh, d
        # EAGLE-1/2's published layer 0 and EAGLE-3's have no input norm (EAGLE-3 norms its two inputs instead)
        self.input_layernorm = RMSNorm(H, c["eps"]) if c.get("layer_input_norm", True) else None
        self.post_attention_layernorm = RMSNorm(H, c["eps"])
        self.q_proj = nn.Linear(A, nh * d, bias=c["attention_bias"])
        self.k_proj = nn.Linear(A, kvh * d, bias=c["attention_bias"])
        self.v_proj = nn.Linear(A, kvh * d, bias=c["attention_bias"])
        self.o_proj = nn.Linear(nh * d, H, bias=False)
        self.gate_proj = nn.Linear(H, c["intermediate_size"], bias=False)
        self.up_proj = nn.Linear(H, c["intermediate_size"], bias=False)
        self.down_proj = nn.Linear(c["intermediate_size"], H, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                past: tuple[torch.Tensor, torch.Tensor] | None = None, attn_input: torch.Tensor | None = None):
        """x (B, T, H) the residual stream; cos/sin (B, T, d); mask bool (B or 1, T, S + T) or None (causal,
        no past); attn_input (B, T, attn_in): what the attention reads instead of norm(x) (EAGLE-3).

        Returns (out (B, T, H), (k, v) of the T new positions, each (B, kvh, T, d)).
        """
        B, T, _ = x.shape
        h = attn_input if attn_input is not None else self.input_layernorm(x) if self.input_layernorm else x
        q = self.q_proj(h).view(B, T, self.nh, self.d).transpose(1, 2)  # (B, nh, T, d)
        k = self.k_proj(h).view(B, T, self.kvh, self.d).transpose(1, 2)  # (B, kvh, T, d)
        v = self.v_proj(h).view(B, T, self.kvh, self.d).transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, d)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        new = (k, v)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, kvh, S + T, d)
            v = torch.cat([past[1], v], dim=2)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None],
                                              is_causal=mask is None, enable_gqa=self.nh != self.kvh)
        x = x + self.o_proj(attn.transpose(1, 2).reshape(B, T, self.nh * self.d))
        x = x + self.down_proj(F.silu(self.gate_proj(self.post_attention_layernorm(x))) * self.up_proj(
            self.post_attention_layernorm(x)))
        return x, new


class EagleHead(HeadBase):
    kind = "eagle"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        H = config["hidden_size"]
        # a card without "embed_norm" (one written by an older version of the workbench) is a head without the norm
        self.embed_norm = RMSNorm(H, config["eps"]) if config.get("embed_norm") else None
        self.fc = nn.Linear(2 * H, H, bias=config.get("fc_bias", True))  # input [f_t; e(x_{t+1})]
        self.layer = DecoderLayer(config)
        self.norm = RMSNorm(H, config["eps"]) if config.get("final_norm", True) else None  # EAGLE-1/2 have none
        self.register_buffer("inv_freq", torch.ones(config["head_dim"] // 2), persistent=True)
        self.rope_scale = float(config.get("rope_scale", 1.0))

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) -> cos, sin (B, T, head_dim)."""
        freqs = positions[..., None].float() * self.inv_freq.float()  # (B, T, d/2)
        emb = torch.cat([freqs, freqs], dim=-1)
        return (emb.cos() * self.rope_scale).to(dtype), (emb.sin() * self.rope_scale).to(dtype)

    def forward(self, feats: torch.Tensor, embs: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None = None, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """feats (B, T, H) = f_t, embs (B, T, H) = e(x_{t+1}), positions (B, T) = t + 1... see module docstring.

        Returns (predicted features f_{t+1} (B, T, H), new (k, v)).
        """
        if self.embed_norm is not None:
            embs = self.embed_norm(embs)
        x = self.fc(torch.cat([feats, embs], dim=-1))  # (B, T, H)
        cos, sin = self.rope(positions, x.dtype)
        x, new = self.layer(x, cos, sin, mask, past)
        return (self.norm(x) if self.norm is not None else x), new


class Eagle3Head(EagleHead):
    """EAGLE-3 (module docstring). Config: the layer's shape (`eagle_config`), `aux_layers` (the three
    indices into the target's `hidden_states` fc reads), `target_hidden_size`, `draft_vocab`, `vocab_size`,
    `norm_before_residual` (the residual is hidden_norm(h), as some speculators heads train; the reference
    takes it before the norm), `own_embed` (the head carries its own token embedding)."""

    kind = "eagle3"

    def __init__(self, config: dict[str, Any]) -> None:
        H = config["hidden_size"]
        super().__init__({**config, "attn_in": 2 * H, "layer_input_norm": False, "embed_norm": True,
                          "final_norm": True, "fc_bias": False})
        self.config = dict(config)
        Ht = int(config.get("target_hidden_size") or H)
        self.fc = nn.Linear(len(config["aux_layers"]) * Ht, H, bias=False)  # [low; mid; high] -> h
        self.hidden_norm = RMSNorm(H, config["eps"])
        self.lm_head = nn.Linear(H, config["draft_vocab"], bias=False)
        self.embed = nn.Embedding(config["vocab_size"], H) if config.get("own_embed") else None
        # target id of draft row i = i + d2t[i]; t2d marks the target ids the draft vocabulary holds
        self.register_buffer("d2t", torch.zeros(config["draft_vocab"], dtype=torch.long), persistent=True)
        self.register_buffer("t2d", torch.zeros(config["vocab_size"], dtype=torch.bool), persistent=True)

    @property
    def layers_wanted(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self.config["aux_layers"])

    def committed(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., Ht (1 + 3)): the target's final states, then its three aux layers' -> h (..., H)."""
        Ht = self.fc.in_features // len(self.config["aux_layers"])
        return self.fc(hidden[..., Ht:])

    def forward(self, feats: torch.Tensor, embs: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None = None, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """feats (B, T, H) = h (fc of the target's layers, or the layer's own previous output), embs (B, T, H)
        = e(x_{t+1}), positions (B, T). Returns (the layer's pre-norm output (B, T, H), new (k, v))."""
        hn = self.hidden_norm(feats)
        x = torch.cat([self.embed_norm(embs), hn], dim=-1)  # (B, T, 2H): embedding first, as published
        cos, sin = self.rope(positions, feats.dtype)
        residual = hn if self.config.get("norm_before_residual") else feats
        return self.layer(residual, cos, sin, mask, past, attn_input=x)

    def draft_logits(self, out: torch.Tensor) -> torch.Tensor:
        """(..., H) layer outputs -> (..., draft_vocab) logits over the draft vocabulary."""
        return self.lm_head(self.norm(out))


HEAD_CLASSES: dict[str, type[HeadBase]] = {cls.kind: cls for cls in (MedusaHeads, HydraHeads, EagleHead, Eagle3Head)}


def eagle_config(model_config: Any) -> dict[str, Any]:
    """The EAGLE layer's shape from the target's transformers config."""
    H = model_config.hidden_size
    nh = model_config.num_attention_heads
    return {"hidden_size": H, "heads_q": nh, "heads_kv": getattr(model_config, "num_key_value_heads", None) or nh,
            "head_dim": getattr(model_config, "head_dim", None) or H // nh,
            "intermediate_size": getattr(model_config, "intermediate_size", 4 * H),
            "eps": float(getattr(model_config, "rms_norm_eps", 1e-6)),
            "attention_bias": bool(getattr(model_config, "attention_bias", False)), "embed_norm": True}


def init_eagle_from_target(head: EagleHead, model: nn.Module) -> bool:
    """Start the EAGLE layer from the target's top decoder layer and final norm; rotary frequencies from the
    target. Returns False (the layer stays randomly initialised) when the target's layer is not Llama-shaped."""
    decoder = model.get_decoder()
    rotary = getattr(decoder, "rotary_emb", None)
    # one set of frequencies, or one per layer type (Gemma 3): then the global layers' (the EAGLE layer is global)
    prefix = "" if getattr(rotary, "inv_freq", None) is not None else "full_attention_"
    inv_freq = getattr(rotary, f"{prefix}inv_freq", None)
    if inv_freq is not None and inv_freq.shape == head.inv_freq.shape:
        head.inv_freq.copy_(inv_freq.float())
        head.rope_scale = float(getattr(rotary, f"{prefix}attention_scaling", None) or 1.0)
        head.config["rope_scale"] = head.rope_scale
    top = decoder.layers[-1]
    names = {"input_layernorm": top.input_layernorm if hasattr(top, "input_layernorm") else None,
             "post_attention_layernorm": getattr(top, "post_attention_layernorm", None)}
    attn, mlp = getattr(top, "self_attn", None), getattr(top, "mlp", None)
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        names[n] = getattr(attn, n, None)
    for n in ("gate_proj", "up_proj", "down_proj"):
        names[n] = getattr(mlp, n, None)
    ours = head.layer
    if any(m is None or getattr(m, "weight", None) is None or m.weight.shape != getattr(ours, n).weight.shape
           for n, m in names.items()):
        return False
    with torch.no_grad():
        for n, m in names.items():
            getattr(ours, n).weight.copy_(_norm_scale(m) if n.endswith("layernorm") else m.weight.float())
            if getattr(m, "bias", None) is not None and getattr(getattr(ours, n), "bias", None) is not None:
                getattr(ours, n).bias.copy_(m.bias.float())
        norm = getattr(decoder, "norm", None)
        if norm is not None and getattr(norm, "weight", None) is not None and norm.weight.shape == head.norm.weight.shape:
            head.norm.weight.copy_(_norm_scale(norm))
        H = head.config["hidden_size"]
        head.fc.weight.zero_()
        head.fc.weight[:, :H].copy_(torch.eye(H))  # starts as "the feature itself" (plus what training adds)
        head.fc.bias.zero_()
    return True


def _norm_scale(norm: nn.Module) -> torch.Tensor:
    """An RMS norm's effective per-channel scale: its output on a constant row (normalised to ones; large, so
    eps vanishes), which is w for a Llama-style norm and 1 + w for a Gemma-style one (stored as offsets from 1)."""
    w = norm.weight
    return norm(torch.full((1, w.shape[0]), 1e3, dtype=torch.float32, device=w.device))[0].float()


def make_eagle3(model: nn.Module, vocab: torch.Tensor | None) -> Eagle3Head:
    """A fresh EAGLE-3 head for `model`: its layer shaped like the target's, fc over EAGLE-3's default three
    layers, a draft vocabulary of the token ids `vocab` (None: all), its norm and LM head started from the
    target's final norm and those rows of its LM head, rotary frequencies from the target."""
    from ..kv_cache import eagle3_layers  # here: kv_cache loads transformers; `workbench heads` needs none

    cfg = getattr(model.config, "text_config", None) or model.config
    V = int(model.get_input_embeddings().weight.shape[0])
    ids = torch.arange(V) if vocab is None else vocab.to("cpu", torch.long).sort().values
    head = Eagle3Head({**eagle_config(cfg), "aux_layers": list(eagle3_layers(cfg)), "draft_vocab": len(ids),
                       "vocab_size": V, "norm_before_residual": False, "rope": rope_of(cfg.to_dict())})
    with torch.no_grad():
        head.d2t.copy_(ids - torch.arange(len(ids)))
        head.t2d.zero_()
        head.t2d[ids] = True
        out = model.get_output_embeddings()
        if getattr(out, "weight", None) is not None and out.weight.shape[1] == head.lm_head.weight.shape[1]:
            head.lm_head.weight.copy_(out.weight.detach().float().cpu()[ids])
        norm = getattr(model.get_decoder(), "norm", None)
        if getattr(norm, "weight", None) is not None and norm.weight.shape == head.norm.weight.shape:
            head.norm.weight.copy_(_norm_scale(norm))
    rotary = getattr(model.get_decoder(), "rotary_emb", None)
    # one set of frequencies, or one per layer type (Gemma 3): then the global layers' (the head's layer is global)
    prefix = "" if getattr(rotary, "inv_freq", None) is not None else "full_attention_"
    inv_freq = getattr(rotary, f"{prefix}inv_freq", None)
    if inv_freq is not None:
        head.inv_freq = inv_freq.detach().float().cpu().clone()
        head.rope_scale = float(getattr(rotary, f"{prefix}attention_scaling", None) or 1.0)
        head.config["rope_scale"] = head.rope_scale
    return head


def make_head(kind: str, model: nn.Module, heads: int = 4, fuse: bool = False,
              vocab: torch.Tensor | None = None) -> HeadBase:
    """A fresh (untrained) head of `kind` for the target transformers model `model`; `fuse`: read the target's
    feature layers (`cache.feature_layers`) as well as its final hidden states; `vocab`: an EAGLE-3 head's
    draft vocabulary (token ids; None: the whole vocabulary)."""
    from ..kv_cache import feature_layers  # here: kv_cache loads transformers; `workbench heads` needs none

    if kind == "eagle3":
        return make_eagle3(model, vocab)

    H = model.config.hidden_size
    fused = {"feature_layers": list(feature_layers(model.config)),
             "eps": float(getattr(model.config, "rms_norm_eps", 1e-6))} if fuse else {}
    if kind == "medusa":
        return MedusaHeads({"hidden_size": H, "heads": heads, **fused})
    if kind == "hydra":
        return HydraHeads({"hidden_size": H, "heads": heads, **fused})
    if kind == "eagle":
        head = EagleHead({**eagle_config(model.config), **fused})
        head.config["init_from_target"] = init_eagle_from_target(head, model)
        return head
    raise ValueError(f"unknown head kind {kind!r}; kinds: {', '.join(HEAD_CLASSES)}")
