"""The PARD draft model: a small draft LM that drafts k tokens in one forward, from the context and k - 1 mask tokens.

PARD (An et al. 2025, "PARD: Accelerating LLM Inference with Low-Cost PARallel
Draft Model Adaptation") adapts an ordinary small draft LM so that, given the
context followed by k - 1 mask tokens, it predicts the next k tokens at once:

    input   x_1 .. x_t          the context (x_t: the root, the last committed token), as token embeddings
            m, m, .., m         k - 1 copies of one learned mask embedding, at positions t + 1 .. t + k - 1
    layers  L Llama-style decoder layers, CAUSAL attention (an ordinary LM forward), RoPE at the
            tokens' own positions; the committed tokens' keys/values are cached between steps
    output  norm(x) at x_t -> the target's LM head -> logits of x_{t+1};
            norm(x) at the i-th mask -> logits of x_{t+1+i}, i = 1 .. k - 1

So one draft forward over (new committed tokens + k - 1 masks) drafts the whole block; the masks'
keys/values are never kept (the next step feeds the tokens that were actually committed).
The draft starts as a smaller copy of the target (its evenly spaced decoder layers, as
`workbench train --kind draft` makes one) or from a distilled draft's layers, and is trained
with PARD's recipe (mask tokens, conditional drop of the mask positions: workbench.train_pard).
Embeddings and LM head are the target's (not stored: the saved draft is its layers, its final
norm and the mask vector).

Why the block's q is valid for speculative sampling: position i's softmax q_i is a function of the
context alone (the inputs at the other block positions are the fixed mask embedding, never the tokens
drafted there). Drawing each x_{t+1+i} ~ q_i independently therefore draws it from
q_i( . | context, x_{t+1..t+i}) = q_i( . ), so the chain verifier's "accept with min(1, p/q), else
resample from norm(max(0, p - q))" is the standard exact rule.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .block import copy_layers
from .modules import HEAD_CLASSES, DecoderLayer, HeadBase, RMSNorm, eagle_config

KV = tuple[torch.Tensor, torch.Tensor]  # one layer's (keys, values), each (B, kvh, S, d)


class PardHead(HeadBase):
    kind = "pard"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        H = config["hidden_size"]
        self.block = int(config["block"])  # k: tokens drafted per forward (k - 1 masks)
        self.mask = nn.Parameter(torch.zeros(H))  # the mask token's embedding
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(int(config["layers"])))
        self.norm = RMSNorm(H, config["eps"])
        self.register_buffer("inv_freq", torch.ones(config["head_dim"] // 2), persistent=True)
        self.rope_scale = float(config.get("rope_scale", 1.0))

    def forward(self, embs: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None,
                past: list[KV] | None = None) -> tuple[torch.Tensor, list[KV]]:
        """embs (B, T, H) input embeddings (tokens or the mask vector); positions (B, T); mask bool (B or 1, T, S + T)
        (None: causal over the T inputs, no past); past: per layer the (k, v) of S cached positions.

        Returns (norm(x) (B, T, H), per layer the (k, v) of the T new positions).
        """
        freqs = positions[..., None].float() * self.inv_freq.float()  # (B, T, d/2)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = (emb.cos() * self.rope_scale).to(embs.dtype), (emb.sin() * self.rope_scale).to(embs.dtype)
        x, new = embs, []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, cos, sin, mask, None if past is None else past[i])
            new.append(kv)
        return self.norm(x), new


HEAD_CLASSES[PardHead.kind] = PardHead  # load_head builds a head of a card's kind from this table


def source_layers(n: int, layers: int) -> list[int]:
    """The target layers a `layers`-layer copy of an n-layer target starts from: evenly spaced, the first and last
    included (the last alone for one layer), as the distilled draft picks them."""
    return sorted({round(i * (n - 1) / max(layers - 1, 1)) for i in range(layers)}) if layers > 1 else [n - 1]


def make_pard_head(model: nn.Module, block: int = 8, layers: int = 1, source: nn.Module | None = None) -> PardHead:
    """A fresh PARD draft for the target transformers model `model`: decoder layers copied from `source` (a distilled
    draft model of this target: its layers, in order) or else from the target's evenly spaced layers; final norm and
    rotary frequencies from the same model; the mask embedding starts at the mean token embedding."""
    config = {**eagle_config(model.config), "block": block, "layers": layers}
    config.pop("embed_norm", None)
    head = PardHead(config)
    src = source if source is not None else model
    decoder = src.get_decoder()
    picks = (list(range(len(decoder.layers)))[:layers] if source is not None
             else source_layers(len(decoder.layers), layers))
    with torch.no_grad():
        copied = len(picks) == layers and copy_layers(head.layers, [decoder.layers[i] for i in picks])
        norm = getattr(decoder, "norm", None)
        if copied and getattr(norm, "weight", None) is not None and norm.weight.shape == head.norm.weight.shape:
            head.norm.weight.copy_(norm.weight.float())
        rotary = getattr(decoder, "rotary_emb", None)
        if getattr(rotary, "inv_freq", None) is not None and rotary.inv_freq.shape == head.inv_freq.shape:
            head.inv_freq.copy_(rotary.inv_freq.float())
            head.rope_scale = float(getattr(rotary, "attention_scaling", None) or 1.0)
            head.config["rope_scale"] = head.rope_scale
        head.mask.copy_(model.get_input_embeddings().weight.detach().float().mean(0))
    head.config["init_from"] = ("draft" if source is not None else "target") if copied else "random"
    head.config["source_layers"] = picks if copied else []
    return head


class PardCache:
    """The draft's KV cache of committed tokens for one run: `block(context, k)` feeds the tokens not cached yet plus
    k - 1 masks in one forward and returns the k block positions' final states; only the committed tokens'
    keys/values are kept (a context that diverges from the cached tokens crops the cache first)."""

    def __init__(self, head: PardHead, embed: nn.Module) -> None:
        self.head, self.embed = head, embed
        self.tokens: list[int] = []  # tokens whose keys/values are cached
        self.past: list[KV] | None = None

    def crop(self, n: int) -> None:
        if n < len(self.tokens):
            self.tokens = self.tokens[:n]
            self.past = None if n == 0 else [(k[:, :, :n], v[:, :, :n]) for k, v in self.past]

    @torch.inference_mode()
    def block(self, context: list[int], k: int) -> torch.Tensor:
        """(k, H) final states of the root (the last of `context`) and k - 1 masks after it: one draft forward."""
        n = 0
        while n < min(len(self.tokens), len(context)) and self.tokens[n] == context[n]:
            n += 1
        self.crop(min(n, len(context) - 1))  # the root is always fed: its output drafts x_{t+1}
        S = len(self.tokens)
        dev = self.head.mask.device
        new = torch.tensor([context[S:]], device=dev)  # (1, R) committed tokens not cached yet
        R = new.shape[1]
        embs = torch.cat([self.embed(new).to(self.head.mask.dtype),
                          self.head.mask.expand(1, k - 1, -1)], dim=1)  # (1, R + k - 1, H)
        T = embs.shape[1]
        pos = torch.arange(S, S + T, device=dev)[None]  # (1, T)
        mask = (torch.arange(S + T, device=dev)[None] <= pos[0, :, None])[None]  # (1, T, S + T) causal
        out, kv = self.head(embs, pos, mask, self.past)
        kept = [(k_[:, :, :R], v_[:, :, :R]) for k_, v_ in kv]  # the committed tokens' only, never the masks'
        self.past = kept if self.past is None else [(torch.cat([pk, k_], dim=2), torch.cat([pv, v_], dim=2))
                                                    for (pk, pv), (k_, v_) in zip(self.past, kept)]
        self.tokens = list(context)
        return out[0, R - 1:]  # (k, H): the root's state, then the masks'
