"""Trace: what happened in one run, step by step, and the metrics derived from it.

Every view (UI figure, notebook plot, CLI table, stored row) is a function of a
Trace. This module has no torch import so presenters and the store can use it
without loading a model.

Conventions:
- A *step* is one target forward pass. Step 0 is the prefill, which commits the
  first new token; every later step verifies a draft (possibly empty).
- A draft is a tree of nodes: node i has ``tokens[i]`` and ``parents[i]`` (-1 means
  its parent is the last committed token). A chain is the one-path case.
- ``q[i]`` is the probability the drafter gave node i's token under the
  distribution it was drawn from (None for deterministic drafters such as
  prompt lookup); ``p[i]`` is the target's probability of that token at the
  node's parent (after temperature / top-k / top-p).
- ``target_nll[j]`` is committed token j's negative log-likelihood under the full
  target at temperature 1, from the forward that verified it (absent when that
  forward ran on a compressed KV cache).
- The metrics themselves (τ, α, α_k, γ, c, ...) are defined once, in
  workbench.metrics; ``Summary`` holds them for one run.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from . import metrics as M
from . import tree_shape


@dataclass
class Step:
    index: int
    kind: str  # "prefill" | "decode"
    tokens: list[int] = field(default_factory=list)  # draft node tokens
    parents: list[int] = field(default_factory=list)  # parent node index, -1 = root
    q: list[float | None] = field(default_factory=list)  # draft prob of each node's token
    p: list[float] = field(default_factory=list)  # target prob of each node's token
    accepted: list[int] = field(default_factory=list)  # node indices of the accepted path, root first
    bonus_token: int = -1  # token the target chose itself (bonus or correction)
    bonus_p: float = float("nan")
    committed: list[int] = field(default_factory=list)  # tokens appended this step (after stop truncation)
    draft_s: float = 0.0
    verify_s: float = 0.0
    total_s: float = 0.0
    t_end: float = 0.0  # seconds since the run started, when this step was committed
    draft_forwards: int = 0  # drafter forwards that made the draft (1: a block drafted in one forward); 0: not counted
    # NLL (nats, temperature 1) of each committed token under the full target, read from this step's forward
    # (workbench.sampling.token_nll_rows); empty when that forward was not the full target's (a compressed KV cache)
    target_nll: list[float] = field(default_factory=list)

    @property
    def n_draft(self) -> int:
        return len(self.tokens)

    @property
    def n_accepted(self) -> int:
        return len(self.accepted)

    @property
    def draft_depth(self) -> int:
        """Length of the longest root-to-leaf path (the draft length γ for chains)."""
        return tree_shape.max_depth(self.parents)

    def node_depths(self) -> list[int]:
        return tree_shape.depths(self.parents)

    @property
    def other_s(self) -> float:
        return max(0.0, self.total_s - self.draft_s - self.verify_s)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bonus_p"] = None if math.isnan(self.bonus_p) else self.bonus_p
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Step":
        d = dict(d)
        if d.get("bonus_p") is None:
            d["bonus_p"] = float("nan")
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class Summary:
    new_tokens: int
    wall_s: float
    ttft_s: float
    tokens_per_s: float
    target_forward_passes: int
    mean_accepted_tokens: float  # τ, counts the bonus token
    mean_accepted_draft_tokens: float  # τ - 1 style: draft tokens accepted per forward
    acceptance_rate: float  # α, path acceptance: accepted / drafted positions on the verified path (NaN: none)
    acceptance_by_position: list[float]  # α_k, conditional on reaching position k
    drafted_tokens: int  # every drafted node (all tree nodes)
    accepted_draft_tokens: int
    draft_s: float
    verify_s: float
    other_s: float
    mean_draft_length: float
    peak_mem_mb: float
    path_positions: int = 0  # drafted positions on the verified paths: α's denominator (workbench.metrics)
    node_acceptance_rate: float = float("nan")  # accepted / drafted_tokens (NaN when nothing drafted)

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


@dataclass
class Trace:
    method: str
    params: dict[str, Any]
    prompt_ids: list[int]
    steps: list[Step] = field(default_factory=list)
    wall_s: float = 0.0
    peak_mem_mb: float = float("nan")
    stop_reason: str = ""  # "max_new_tokens" | "eos" | "error"
    # What the run says about itself, each {"kind", "text", ...numbers}: "no_draft" (cost-aware sizing chose
    # plain steps, and why), "profile_measured", "profile_stale", "profile_disagrees" (workbench.engine)
    notes: list[dict[str, Any]] = field(default_factory=list)
    # What made this run lossy, one short line each (a lossy method, a relaxed acceptance rule, a compressed KV
    # cache: its name and setting); empty for a lossless run. A run is lossless only when its method and every
    # option it ran with are.
    lossy: list[str] = field(default_factory=list)

    @property
    def lossless(self) -> bool:
        return not self.lossy

    @property
    def output_ids(self) -> list[int]:
        out: list[int] = []
        for s in self.steps:
            out.extend(s.committed)
        return out

    @property
    def output_nll(self) -> list[float] | None:
        """Each output token's NLL under the full target, as its decode's forwards gave it (Step.target_nll);
        None unless every step recorded one per committed token (workbench.accounting then runs a forward)."""
        out: list[float] = []
        for s in self.steps:
            if len(s.target_nll) != len(s.committed):
                return None
            out.extend(s.target_nll)
        return out

    def note(self, kind: str) -> dict[str, Any] | None:
        """The run's first note of this kind (see `notes`), or None."""
        return next((n for n in self.notes if n.get("kind") == kind), None)

    def token_origins(self) -> list[dict[str, Any]]:
        """One record per output token: which step made it and how.

        origin is "draft" (an accepted draft token) or "target" (the prefill
        token, a bonus token after a fully accepted draft, or a correction).
        """
        rows: list[dict[str, Any]] = []
        for s in self.steps:
            path = [(s.tokens[i], "draft", s.q[i] if i < len(s.q) else None, s.p[i] if i < len(s.p) else None)
                    for i in s.accepted]
            path.append((s.bonus_token, "target", None, None if math.isnan(s.bonus_p) else s.bonus_p))
            for pos, tok in enumerate(s.committed):
                ptok, origin, q, p = path[pos] if pos < len(path) else (tok, "target", None, None)
                rows.append({"token": tok, "origin": origin, "step": s.index, "q": q, "p": p,
                             "position_in_step": pos})
        return rows

    def summary(self) -> Summary:
        return summarize(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": self.params,
            "prompt_ids": self.prompt_ids,
            "steps": [s.to_dict() for s in self.steps],
            "wall_s": self.wall_s,
            "peak_mem_mb": None if math.isnan(self.peak_mem_mb) else self.peak_mem_mb,
            "stop_reason": self.stop_reason,
            "notes": [dict(n) for n in self.notes],
            "lossy": list(self.lossy),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trace":
        return cls(
            method=d["method"],
            params=d.get("params", {}),
            prompt_ids=list(d.get("prompt_ids", [])),
            steps=[Step.from_dict(s) for s in d.get("steps", [])],
            wall_s=d.get("wall_s", 0.0),
            peak_mem_mb=float("nan") if d.get("peak_mem_mb") is None else d["peak_mem_mb"],
            stop_reason=d.get("stop_reason", ""),
            notes=[dict(n) for n in d.get("notes") or [] if isinstance(n, dict)],
            lossy=[str(x) for x in d.get("lossy") or []],
        )


def summarize(trace: Trace) -> Summary:
    steps = trace.steps
    new_tokens = sum(len(s.committed) for s in steps)
    forwards = len(steps)
    acc = M.acceptance(steps)
    wall = trace.wall_s
    return Summary(
        new_tokens=new_tokens,
        wall_s=wall,
        ttft_s=steps[0].t_end if steps else float("nan"),
        tokens_per_s=new_tokens / wall if wall > 0 else float("nan"),
        target_forward_passes=forwards,
        mean_accepted_tokens=M.tau(new_tokens, forwards),
        mean_accepted_draft_tokens=M.tau_without_bonus(new_tokens, forwards),
        acceptance_rate=acc.path_rate,
        acceptance_by_position=M.acceptance_by_position(steps),
        drafted_tokens=acc.drafted_nodes,
        accepted_draft_tokens=acc.accepted,
        path_positions=acc.path_positions,
        node_acceptance_rate=acc.node_rate,
        draft_s=sum(s.draft_s for s in steps),
        verify_s=sum(s.verify_s for s in steps),
        other_s=sum(s.other_s for s in steps),
        mean_draft_length=M.mean_draft_length(steps),
        peak_mem_mb=trace.peak_mem_mb,
    )
