"""KV-cache helpers over transformers' DynamicCache: roll back, keep accepted tree nodes.

Both operate on every layer's (B, heads, T, head_dim) key/value tensors along T,
so the accepted prefix is never recomputed.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache


def cache_len(cache: DynamicCache) -> int:
    return cache.get_seq_length()


def crop(cache: DynamicCache, length: int) -> None:
    """Keep the first `length` positions of every layer."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        if layer.keys.shape[-2] > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = min(layer.cumulative_length, length)


def keep_positions(cache: DynamicCache, start: int, keep: list[int]) -> None:
    """Keep positions [0, start) plus `start + k` for k in keep (in that order), drop the rest.

    Used after tree verification: `start` is the root's slot, `keep` the offsets
    (root = 0) of the accepted path. When the path is a prefix run this is a crop.
    """
    if keep == list(range(len(keep))):
        crop(cache, start + len(keep))
        return
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        idx = torch.tensor([start + k for k in keep], device=layer.keys.device)
        layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys.index_select(-2, idx)], dim=-2)
        layer.values = torch.cat([layer.values[..., :start, :], layer.values.index_select(-2, idx)], dim=-2)
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = layer.keys.shape[-2]
