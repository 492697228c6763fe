"""The eager backend over a compressed KV cache (workbench.kv_compress): the target's session of a run with
KV-cache compression.

The engine still speaks in logical positions (every committed token counts); the cache holds fewer rows.
`evicted` rows were dropped, all of them older than the current step, so a rollback (crop, keep) of this
step's draft maps to rows by subtracting it. Every forward passes its logical positions and, for several
tokens, an explicit causal block, so no mask or position is inferred from the cache's row count. Before each
forward the rows committed since the last one are scored (h2o) and, when the cache holds more than its
budget's share plus a slack, it is cut to that share (`kv_compress.choose_kept`).
"""
from __future__ import annotations

from typing import Any

import torch

from .. import kv_compress as kc
from ..config import KVConfig
from .eager import EagerSession

# Rows past the budget before the cache is cut again: an eviction copies every layer's rows, so not every step.
SLACK = 16


class CompressedSession(EagerSession):
    def __init__(self, model: Any, cfg: KVConfig) -> None:
        super().__init__(model)
        self.cfg = cfg
        self.evicted = 0  # rows dropped so far; logical length = rows + evicted
        self.scores = torch.zeros(0)  # (rows,) accumulated attention (h2o)
        self.peak_rows = 0  # most rows the cache held
        self.saved: list[tuple[int, int]] = []  # (bytes held, bytes uncompressed) after each cut

    @property
    def rows(self) -> int:
        return self.length - self.evicted

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None,
                block: torch.Tensor | None = None, keep: int = 0, hidden: bool | str = False) -> Any:
        self._compress()
        T = ids.shape[1]
        if positions is None:
            positions = torch.arange(self.length, self.length + T, device=ids.device)[None]  # (1, T) logical
        if block is None and T > 1:
            block = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()  # (T, T) causal
        logical = self.length
        self.length = self.rows  # the parent builds its mask over the rows it holds
        try:
            out = super().forward(ids, positions=positions, block=block, keep=keep, hidden=hidden)
        finally:
            self.length = logical + T
        self.peak_rows = max(self.peak_rows, self.rows)
        return out

    def keep(self, start: int, offsets: list[int]) -> None:
        super().keep(start - self.evicted, offsets)
        self.length = start + len(offsets)

    def crop(self, n: int) -> None:
        if n < self.length:
            if n < self.evicted + self.scores.shape[0]:  # only this step's rows may be rolled back
                self.scores = self.scores[: max(0, n - self.evicted)]
            super().crop(n - self.evicted)
            self.length = n

    def _compress(self) -> None:
        rows = self.rows
        scored = self.scores.shape[0]
        if self.cfg.policy == "h2o" and rows > scored:
            new = kc.attention_proxy(self.cache, scored, rows)  # (rows,)
            self.scores = torch.cat([self.scores, torch.zeros(rows - scored)]) + new.cpu()
        size = kc.kept_size(self.cfg, self.length)
        if rows <= size + SLACK:
            return
        scores = self.scores if self.cfg.policy == "h2o" else torch.zeros(rows)
        kept = kc.choose_kept(self.cfg, scores, size)  # (size,)
        per_row = kc.cache_bytes(self.cache) / rows
        kc.evict(self.cache, kept)
        if self.cfg.policy == "h2o":
            self.scores = self.scores[kept]
        self.evicted += rows - size
        self.saved.append((kc.cache_bytes(self.cache), round(per_row * self.length)))

    def note(self) -> dict[str, Any]:
        """The memory the compression saved (measured at the end of the run), for `Trace.notes`."""
        held = kc.cache_bytes(self.cache)
        full = round(held / max(self.rows, 1) * self.length)  # the same positions uncompressed
        saved = 1 - held / full if full else 0.0
        return {"kind": "kv_compression", "policy": self.cfg.policy, "budget": self.cfg.budget,
                "cache_bytes": held, "uncompressed_bytes": full, "saved_fraction": round(saved, 4),
                "evicted_positions": self.evicted, "positions": self.length,
                "text": f"KV-cache compression ({self.cfg.policy}, budget {self.cfg.budget:g}): the cache holds "
                        f"{held / 2**20:.2f} MiB for {self.length} positions, {saved:.0%} less than uncompressed "
                        f"({full / 2**20:.2f} MiB; {self.evicted} positions evicted); drafting is lossless with "
                        f"respect to this compressed target"}

    def close(self) -> None:
        super().close()
        self.evicted = 0
        self.scores = torch.zeros(0)
