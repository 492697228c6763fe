"""KV-cache compression under a memory budget: which cached positions to keep, and what the cache weighs.

Policies (workbench.config.KVConfig):
- streaming (StreamingLLM, Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks"):
  the first `sinks` positions (the attention sinks) and the most recent ones;
- h2o (H2O, Zhang et al. 2023, "Heavy-Hitter Oracle"): the sinks, a recent window (`recent` of the kept
  positions) and the heavy hitters: the positions with the largest attention accumulated so far.

Attention weights without patched modeling code: the stock models run scaled-dot-product attention, which
returns no weights, so `attention_proxy` scores each committed position as a query with its own *key*
standing in for its query (both are projections of the same normed hidden state, rotated by the same rotary
position; the projection weights differ). Per layer and key head it takes softmax(k_i . k_j / sqrt(d)) over
the positions j <= i still cached, sums over heads, layers and queries, and adds it to each position's
score: H2O's accumulated attention, with this stand-in for q. One score per position, so every layer keeps
the same positions (the cache stays one length).

Positions keep their original rotary positions (the keys in the cache are already rotated; new tokens get
their true positions), as H2O does; StreamingLLM's re-numbering inside the cache is not done. What the
compressed cache saves is measured as bytes of its key/value tensors against the bytes the same positions
would take uncompressed (`cache_bytes`).
"""
from __future__ import annotations

import math

import torch

from .config import KVConfig


def cache_bytes(cache) -> int:
    """Bytes held by every layer's key and value tensors (a quantised layer's own count: kv_quant.QuantizedLayer)."""
    return sum(layer.nbytes() if hasattr(layer, "nbytes") else
               sum(t.numel() * t.element_size() for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
                   if t is not None)
               for layer in cache.layers)


def kept_size(cfg: KVConfig, length: int) -> int:
    """Positions the cache keeps once `length` have been seen: the budget's share, at least the sinks + 1."""
    return max(cfg.sinks + 1, math.ceil(cfg.budget * length))


@torch.inference_mode()
def attention_proxy(cache, start: int, stop: int) -> torch.Tensor:
    """(stop,) attention the queries at cached rows [start, stop) give every row < stop (module docstring)."""
    total = None
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if keys is None or keys.numel() == 0:
            continue
        k = keys[0, :, :stop].float()  # (heads, S, d)
        q = k[:, start:stop]  # (heads, T, d) the new rows, their keys standing in for their queries
        scores = q @ k.transpose(-1, -2) / math.sqrt(k.shape[-1])  # (heads, T, S)
        rows = torch.arange(start, stop, device=k.device)[:, None]
        scores = scores.masked_fill(torch.arange(stop, device=k.device)[None, :] > rows, float("-inf"))  # causal
        part = scores.softmax(-1).sum(dim=(0, 1))  # (S,)
        total = part if total is None else total + part
    return total if total is not None else torch.zeros(stop)


def choose_kept(cfg: KVConfig, scores: torch.Tensor, size: int) -> torch.Tensor:
    """Which of the len(scores) cached rows to keep, `size` of them, in order -> (size,) long indices."""
    n = scores.shape[0]
    sinks = min(cfg.sinks, size)
    if cfg.policy == "streaming":
        recent = size - sinks
        keep = list(range(sinks)) + list(range(n - recent, n))
        return torch.tensor(keep, dtype=torch.long)
    recent = max(1, min(size - sinks, round(cfg.recent * size)))
    heavy = size - sinks - recent
    middle = scores[sinks:n - recent]  # (n - sinks - recent,) candidates for the heavy hitters
    top = (torch.topk(middle, heavy).indices + sinks).tolist() if heavy > 0 else []
    return torch.tensor(sorted(list(range(sinks)) + top + list(range(n - recent, n))), dtype=torch.long)


def evict(cache, kept: torch.Tensor) -> None:
    """Keep only rows `kept` (sorted) of every layer's keys and values."""
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if keys is None or keys.numel() == 0:
            continue
        idx = kept.to(keys.device)
        layer.keys = layer.keys.index_select(-2, idx)  # (B, heads, size, d)
        layer.values = layer.values.index_select(-2, idx)
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = layer.keys.shape[-2]
