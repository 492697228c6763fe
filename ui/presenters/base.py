"""What every presenter shares: the colour palettes, number and token formatting, step outcomes."""
from __future__ import annotations

import math
from typing import Any

from workbench.trace import Step, Summary, Trace

ORIGIN_COLORS = {
    "draft": "#bfe8c8",  # accepted draft token
    "bonus": "#c9dcff",  # target token after a fully accepted draft
    "correction": "#ffd6a8",  # target token that replaced a rejected draft token
    "plain": "#e9e9ee",  # target token, nothing was drafted
}
ORIGIN_LABELS = {
    "draft": "accepted draft token",
    "bonus": "bonus token (target, draft fully accepted)",
    "correction": "correction (target, after a rejected draft token)",
    "plain": "target token (no draft this step)",
}
TREE_COLORS = {
    "root": "#555555",
    "accepted": "#2e9d4a",
    "rejected": "#b8b8b8",
    "bonus": "#1f6fd1",
    "correction": "#e8772e",
    "plain": "#7a7a8c",
    "edge": "#cccccc",
}
LATENCY_COLORS = {"draft": "#8fb9e8", "verify": "#e8a23a", "other": "#b8b8b8"}
PLOT_TEMPLATE = "plotly_white"



def _get(rec: Any, key: str, default: Any = None) -> Any:
    """A field of a run record (store.RunRecord) or of a dict with the same keys."""
    return rec.get(key, default) if isinstance(rec, dict) else getattr(rec, key, default)


def _fmt_prob(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def display_token(text: str) -> str:
    """A token's text made visible in a label: newlines as ↵, tabs as →, empty as ∅."""
    if text == "":
        return "∅"
    return visible(text.replace("\n", "↵").replace("\t", "→"))


def visible(text: str) -> str:
    """Control characters (other than newline) as Unicode control pictures, so every token shows."""
    return "".join(chr(0x2400 + ord(c)) if (ord(c) < 32 and c != "\n") else ("␡" if c == "\x7f" else c)
                   for c in text)


def trace_wall_s(trace: Trace) -> float:
    """The run's wall time; while a run is still streaming, the last step's end time."""
    if trace.wall_s > 0:
        return trace.wall_s
    return trace.steps[-1].t_end if trace.steps else 0.0


def live_summary(trace: Trace) -> Summary:
    """trace.summary(), with tokens/s filled in from the last step while the run is in progress."""
    s = trace.summary()
    wall = trace_wall_s(trace)
    if math.isnan(s.tokens_per_s) and wall > 0:
        s.tokens_per_s = s.new_tokens / wall
        s.wall_s = wall
    return s


def step_outcome(step: Step) -> str:
    """How the target's own token of a step came about: "plain", "bonus" or "correction"."""
    if step.kind == "prefill" or not step.tokens:
        return "plain"
    last = step.accepted[-1] if step.accepted else -1
    has_children = any(par == last for par in step.parents)
    return "correction" if has_children else "bonus"
