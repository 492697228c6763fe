"""The eager backend over a quantised KV cache (workbench.kv_quant, KIVI): the target's session of a run with
`--kv int8` or `--kv int4`.

Every layer of the session's DynamicCache is a `kv_quant.QuantizedLayer`. Rollback goes to the layers: `crop`
truncates, `keep` keeps the accepted tree rows, both on the full-precision residual where this step's rows are.

Drafting stays exactly lossless with respect to the quantised target. In plain decoding, the forward whose
query sits at position p starts with p cached rows, so it sees group j of the residual quantised once
p >= quantised + (j + 1) group + residual (`kv_quant`: a group is quantised when it leaves the window). A
forward that verifies several tokens starts with fewer rows than its later queries' positions; where a group
would leave the window inside it, the layers return that group twice, full precision and quantised
(`QuantizedLayer.extra`), and the mask shows each query the copy plain decoding would show it. This needs the
group's rows cached before the forward, which holds whenever `residual` is at least the draft's depth; a
deeper draft sees the group in full precision beyond that.
"""
from __future__ import annotations

from typing import Any

import torch

from .. import kv_cache as kv
from .. import kv_compress as kc
from ..config import KVConfig
from ..draft import additive_mask
from ..kv_quant import QuantizedLayer
from .eager import EagerSession


class QuantizedSession(EagerSession):
    def __init__(self, model: Any, cfg: KVConfig) -> None:
        super().__init__(model)
        self.cfg = cfg
        self._install()

    def _install(self) -> None:
        """Every layer of the fresh cache a quantised one (the cache keeps every position: kv_cache.cache_config)."""
        self.cache.layers = [QuantizedLayer(self.cfg.bits, self.cfg.group, self.cfg.residual)
                             for _ in self.cache.layers]

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None,
                block: torch.Tensor | None = None, keep: int = 0, hidden: bool | str | tuple[int, ...] = False) -> Any:
        for layer in self.cache.layers:
            layer.flush()  # what left the window before this forward (every layer holds the same rows)
        T = ids.shape[1]
        q_pos = positions[0] if positions is not None else self.length + torch.arange(T, device=ids.device)  # (T,)
        groups = self._crossing(int(q_pos.max()))
        if not groups:
            return super().forward(ids, positions=positions, block=block, keep=keep, hidden=hidden)
        first = self.cache.layers[0]
        G, R, Q, E = self.cfg.group, self.cfg.residual, first.quantised, groups * self.cfg.group
        r = self.length - Q
        W = Q + E + r + T  # columns: quantised rows, the extra quantised copies, the residual, the new tokens
        vis = torch.ones(T, W, dtype=torch.bool, device=ids.device)  # (T, W)
        causal = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()  # (T, T)
        vis[:, Q + E + r:] = block if block is not None else causal
        for j in range(groups):
            late = (q_pos >= Q + (j + 1) * G + R)[:, None]  # (T, 1) queries plain decoding shows group j quantised
            vis[:, Q + j * G:Q + (j + 1) * G] = late  # its quantised copy
            vis[:, Q + E + j * G:Q + E + (j + 1) * G] = ~late  # its full-precision rows
        mask = additive_mask(vis, W, self.model.dtype)  # (1, 1, T, W)
        if self.window is not None:
            rows = torch.arange(self.length, device=ids.device)
            kv_pos = torch.cat([rows[:Q + E], rows[Q:], q_pos])  # (W,)
            mask = kv.layer_masks(self.model.config, mask, q_pos, kv_pos)
        for layer in self.cache.layers:
            layer.extra = E
        try:
            return self._run(ids, {"attention_mask": mask, "position_ids": q_pos[None]}, keep, hidden)
        finally:
            for layer in self.cache.layers:
                layer.extra = 0

    def _crossing(self, last: int) -> int:
        """How many residual groups leave the window for some query up to position `last` of this forward (and
        are cached already: module docstring)."""
        if not self.cache.layers or not self.length:
            return 0
        G, R, Q = self.cfg.group, self.cfg.residual, self.cache.layers[0].quantised
        n = 0
        while Q + (n + 1) * G + R <= last and Q + (n + 1) * G <= self.length:
            n += 1
        return n

    def keep(self, start: int, offsets: list[int]) -> None:
        for layer in self.cache.layers:
            layer.keep_rows(start, offsets)
        self.length = start + len(offsets)

    def crop(self, n: int) -> None:
        if n < self.length:
            for layer in self.cache.layers:
                layer.truncate(n)
            self.length = n

    def note(self) -> dict[str, Any]:
        """The memory the quantisation saved (measured at the end of the run), for `Trace.notes`."""
        held = kc.cache_bytes(self.cache)
        full = sum(layer.full_bytes() for layer in self.cache.layers)
        saved = 1 - held / full if full else 0.0
        quantised = self.cache.layers[0].quantised if self.cache.layers else 0
        cfg = self.cfg
        return {"kind": "kv_compression", "policy": cfg.name, "bits": cfg.bits, "group": cfg.group,
                "residual": cfg.residual, "cache_bytes": held, "uncompressed_bytes": full,
                "saved_fraction": round(saved, 4), "quantised_positions": quantised, "evicted_positions": 0,
                "positions": self.length,
                "text": f"KV-cache quantisation (int{cfg.bits}, group {cfg.group}, residual {cfg.residual}): the "
                        f"cache holds {held / 2**20:.2f} MiB for {self.length} positions ({quantised} of them "
                        f"quantised), {saved:.0%} less than uncompressed ({full / 2**20:.2f} MiB); drafting is "
                        f"lossless with respect to this quantised target"}

    def close(self) -> None:
        super().close()
        self._install()
