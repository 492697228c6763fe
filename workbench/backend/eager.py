"""The eager backend: stock transformers forwards over a DynamicCache.

Chains use the model's own causal mask; a tree block becomes a 4D additive mask
over [cached positions + new tokens] (transformers takes a 4D mask as given),
with depth positions, and the sliding window where the model has one. The cache
keeps every position on every layer (`kv_cache.cache_config`), so a sliding-window
model rolls back like any other. Rollback crops the cache; accepted tree nodes
are copied into place (workbench.kv_cache).
"""
from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from .. import kv_cache as kv
from ..draft import additive_mask


class EagerSession:
    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache = DynamicCache(config=kv.cache_config(model.config))
        self.length = 0
        self.window = kv.sliding_window(model.config)  # None: no layer slides
        # keep_prompt: hold on to the prefill's keys/values (prompt_kv), the full target's own whatever the
        # session does to its cache later (a compressing session evicts or quantises them)
        self.keep_prompt = False
        self.prompt_kv: kv.LayerRows | None = None

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None,
                block: torch.Tensor | None = None, keep: int = 0, hidden: bool | str | tuple[int, ...] = False) -> Any:
        kwargs: dict[str, Any] = {}
        T = ids.shape[1]
        if block is not None:
            mask = additive_mask(block, self.length + T, self.model.dtype)  # (1, 1, T, length + T)
            if self.window is not None:
                q_pos = positions[0] if positions is not None else self.length + torch.arange(T, device=ids.device)
                kv_pos = torch.cat([torch.arange(self.length, device=ids.device), q_pos])  # (length + T,)
                mask = kv.layer_masks(self.model.config, mask, q_pos, kv_pos)
            kwargs["attention_mask"] = mask
        if positions is not None:
            kwargs["position_ids"] = positions
        return self._run(ids, kwargs, keep, hidden)

    def _run(self, ids: torch.Tensor, kwargs: dict[str, Any], keep: int, hidden: bool | str | tuple[int, ...]) -> Any:
        """The forward itself, with the mask and positions in `kwargs`; the session grows by ids' T tokens."""
        T = ids.shape[1]
        prefill = self.keep_prompt and self.length == 0
        if hidden:
            layers = hidden if isinstance(hidden, tuple) else hidden == "layers"
            logits, states = kv.forward_hidden(self.model, ids, self.cache, keep, layers=layers, **kwargs)
            out = logits[0], states[0]  # (T or keep, V), (T, H) or with layers (T, H (1 + k))
        else:
            out = kv.forward(self.model, ids, self.cache, logits_to_keep=keep, **kwargs).logits[0]  # (T or keep, V)
        self.length += T
        if prefill:  # every later forward replaces the layers' tensors (a cat, an eviction, a quantisation)
            self.prompt_kv = kv.layer_rows(self.cache)
        return out

    def keep(self, start: int, offsets: list[int]) -> None:
        kv.keep_positions(self.cache, start, offsets)
        self.length = start + len(offsets)

    def crop(self, n: int) -> None:
        if n < self.length:
            kv.crop(self.cache, n)
            self.length = n

    def close(self) -> None:
        self.cache = DynamicCache(config=kv.cache_config(self.model.config))
        self.length = 0
