"""Drafter heads: small modules that draft from the target's own final hidden states.

Every head reuses the target's token embedding and LM head (neither is stored
with the head) and drafts the tokens after the *root* (the last committed token)
from h_t, the target's final hidden state at the position before the root
(t + 1 is the root's position):

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
  predicted features, with a KV cache over the committed positions.

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
    kind = "medusa"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.blocks = nn.ModuleList(ResBlock(config["hidden_size"]) for _ in range(config["heads"]))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., H) final hidden states -> (..., K, H) features; head k's LM-head logits draft token t + k + 2."""
        return torch.stack([blk(h) for blk in self.blocks], dim=-2)


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
        self.nh, self.kvh, self.d = nh, kvh, d
        self.input_layernorm = RMSNorm(H, c["eps"])
        self.post_attention_layernorm = RMSNorm(H, c["eps"])
        self.q_proj = nn.Linear(H, nh * d, bias=c["attention_bias"])
        self.k_proj = nn.Linear(H, kvh * d, bias=c["attention_bias"])
        self.v_proj = nn.Linear(H, kvh * d, bias=c["attention_bias"])
        self.o_proj = nn.Linear(nh * d, H, bias=False)
        self.gate_proj = nn.Linear(H, c["intermediate_size"], bias=False)
        self.up_proj = nn.Linear(H, c["intermediate_size"], bias=False)
        self.down_proj = nn.Linear(c["intermediate_size"], H, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x (B, T, H); cos/sin (B, T, d); mask bool (B or 1, T, S + T) or None (causal, no past).

        Returns (out (B, T, H), (k, v) of the T new positions, each (B, kvh, T, d)).
        """
        B, T, _ = x.shape
        h = self.input_layernorm(x)
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
        self.fc = nn.Linear(2 * H, H)
        self.layer = DecoderLayer(config)
        self.norm = RMSNorm(H, config["eps"])
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
        return self.norm(x), new


HEAD_CLASSES: dict[str, type[HeadBase]] = {cls.kind: cls for cls in (MedusaHeads, HydraHeads, EagleHead)}


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


def make_head(kind: str, model: nn.Module, heads: int = 4, fuse: bool = False) -> HeadBase:
    """A fresh (untrained) head of `kind` for the target transformers model `model`; `fuse`: read the target's
    feature layers (`cache.feature_layers`) as well as its final hidden states."""
    from ..kv_cache import feature_layers  # here: kv_cache loads transformers; `workbench heads` needs none

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
