"""The DFlash-style block head: all k tokens of a block drafted in one forward.

DFlash (Chen et al. 2025, "DFlash: Block Diffusion for Flash Speculative
Decoding") drafts a whole block with a small block-diffusion model conditioned
on the target's fused hidden states. This head is the one-step form of it:

    input   C context slots  fc(h_{t-C+1}), ..., fc(h_t)   the target's fused features of the last
                                                            C committed positions (`committed`)
            1 root slot      norm(e(x_{t+1}))               the last committed token (the root)
            k mask slots     m, m, ..., m                   one learned mask embedding
    layers  L Llama-style decoder layers, attention NON-causal over all C + 1 + k slots
            (every mask slot sees the context, the root and every other mask slot), RoPE at
            positions 0 .. C + k
    output  norm(x) at mask slot i -> the target's LM head -> logits of x_{t+1+i}, i = 1..k

One forward of L layers over C + 1 + k slots drafts the block (a single "denoising" step).
The features come from the verification forward the engine already ran (hidden="layers":
the final states plus a low and a middle layer, EAGLE-3's feature layers), never from an
extra target forward. The decoder layers start from the target's top L layers, the final
norm from the target's; embeddings and LM head are the target's (not stored).

Why the block's q is valid for speculative sampling: slot i's softmax q_i is a function of the
context alone (the features and the root), not of the tokens drafted at the other slots (they
are masks in the input). Drawing each x_{t+1+i} ~ q_i independently therefore draws it from
q_i( . | context, x_{t+2..t+i}) = q_i( . ), so the chain's per-position rule "accept with
min(1, p/q), else resample from norm(max(0, p - q))" is the standard exact one.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .modules import HEAD_CLASSES, DecoderLayer, HeadBase, RMSNorm, eagle_config


class DFlashHead(HeadBase):
    kind = "dflash"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        H = config["hidden_size"]
        self.block = int(config["block"])  # k: tokens drafted per forward
        self.context = int(config["context"])  # C: committed positions read
        self.fc = nn.Linear(H, H)
        self.embed_norm = RMSNorm(H, config["eps"])
        self.mask = nn.Parameter(torch.randn(H) * 0.02)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(int(config["layers"])))
        self.norm = RMSNorm(H, config["eps"])
        self.register_buffer("inv_freq", torch.ones(config["head_dim"] // 2), persistent=True)
        self.rope_scale = float(config.get("rope_scale", 1.0))

    def forward(self, ctx: torch.Tensor, root_emb: torch.Tensor, ctx_valid: torch.Tensor | None = None,
                block: int | None = None) -> torch.Tensor:
        """ctx (B, C, H) committed features (oldest first); root_emb (B, H) = e(x_{t+1}); ctx_valid (B, C) bool
        (False: a padded slot before the sequence's start; None: all valid); block: mask slots (<= k).

        Returns (B, block, H): the final features whose LM-head logits draft x_{t+2 .. t+1+block}.
        """
        B, C, H = ctx.shape
        k = self.block if block is None else block
        x = torch.cat([self.fc(ctx), self.embed_norm(root_emb)[:, None],
                       self.mask.to(ctx.dtype).expand(B, k, H)], dim=1)  # (B, S, H), S = C + 1 + k
        S = x.shape[1]
        keys = torch.ones(B, S, dtype=torch.bool, device=x.device)
        if ctx_valid is not None:
            keys[:, :C] = ctx_valid
        mask = keys[:, None, :].expand(B, S, S)  # (B, S, S): non-causal, padded slots hidden
        pos = torch.arange(S, device=x.device)
        freqs = pos[:, None].float() * self.inv_freq.float()  # (S, d/2)
        emb = torch.cat([freqs, freqs], dim=-1)[None].expand(B, S, -1)  # (B, S, d)
        cos, sin = (emb.cos() * self.rope_scale).to(x.dtype), (emb.sin() * self.rope_scale).to(x.dtype)
        for layer in self.layers:
            x, _ = layer(x, cos, sin, mask)
        return self.norm(x[:, C + 1:])  # (B, k, H)


HEAD_CLASSES[DFlashHead.kind] = DFlashHead  # load_head builds a head of a card's kind from this table


def make_dflash_head(model: nn.Module, block: int = 8, layers: int = 2, context: int = 4) -> DFlashHead:
    """A fresh DFlash head for the target transformers model `model` (always with fused features), its decoder
    layers copied from the target's top `layers` layers where the shapes match, its norm from the target's."""
    from ..kv_cache import feature_layers  # here: kv_cache loads transformers; `workbench heads` needs none

    config = {**eagle_config(model.config), "block": block, "layers": layers, "context": context,
              "feature_layers": list(feature_layers(model.config))}
    config.pop("embed_norm", None)
    head = DFlashHead(config)
    head.config["init_from_target"] = _init_from_target(head, model)
    return head


_LAYER_PARTS = {"input_layernorm": "input_layernorm", "post_attention_layernorm": "post_attention_layernorm",
                "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
                "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
                "down_proj": "mlp.down_proj"}


@torch.no_grad()
def _init_from_target(head: DFlashHead, model: nn.Module) -> bool:
    """Copy the target's top layers, final norm and rotary frequencies into the head; False (random layers
    kept) when the target's layers are not Llama-shaped."""
    decoder = model.get_decoder()
    rotary = getattr(decoder, "rotary_emb", None)
    if rotary is not None and getattr(rotary, "inv_freq", None) is not None:
        head.inv_freq.copy_(rotary.inv_freq.float())
        head.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        head.config["rope_scale"] = head.rope_scale
    if not copy_layers(head.layers, list(decoder.layers)[-len(head.layers):]):
        return False
    norm = getattr(decoder, "norm", None)
    if norm is not None and getattr(norm, "weight", None) is not None and norm.weight.shape == head.norm.weight.shape:
        head.norm.weight.copy_(norm.weight.float())
    H = head.config["hidden_size"]
    head.fc.weight.copy_(torch.eye(H))  # a context slot starts as the feature itself
    head.fc.bias.zero_()
    return True


@torch.no_grad()
def copy_layers(ours: nn.ModuleList, theirs: list[nn.Module]) -> bool:
    """Copy transformers decoder layers `theirs` into the heads' DecoderLayers `ours`, one to one; False (nothing
    copied) when a layer is not Llama-shaped (a part missing or of another shape)."""
    pairs = []
    for dst_layer, src_layer in zip(ours, theirs):
        for name, path in _LAYER_PARTS.items():
            src = src_layer.get_submodule(path) if _has(src_layer, path) else None
            dst = getattr(dst_layer, name)
            if src is None or getattr(src, "weight", None) is None or src.weight.shape != dst.weight.shape:
                return False
            pairs.append((src, dst))
    for src, dst in pairs:
        dst.weight.copy_(src.weight.float())
        if getattr(src, "bias", None) is not None and getattr(dst, "bias", None) is not None:
            dst.bias.copy_(src.bias.float())
    return True


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True
