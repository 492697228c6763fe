"""Where the time went: per-step draft/verify/other bars, tokens over time, acceptance histograms."""
from __future__ import annotations

import html
from typing import Sequence

import pandas as pd
import plotly.graph_objects as go
from workbench.trace import Trace

from .base import LATENCY_COLORS, PLOT_TEMPLATE, TREE_COLORS, _nan


def latency_frame(trace: Trace) -> pd.DataFrame:
    """Per-step timings in ms: step, kind, draft, verify, other, total, committed tokens."""
    return pd.DataFrame([{"step": s.index, "kind": s.kind, "draft_ms": 1000 * s.draft_s,
                          "verify_ms": 1000 * s.verify_s, "other_ms": 1000 * s.other_s,
                          "total_ms": 1000 * s.total_s, "tokens": len(s.committed)} for s in trace.steps],
                        columns=["step", "kind", "draft_ms", "verify_ms", "other_ms", "total_ms", "tokens"])


def latency_figure(trace: Trace) -> go.Figure:
    """Per-step stacked bars: draft / verify / other (ms)."""
    df = latency_frame(trace)
    fig = go.Figure()
    for part in ("draft", "verify", "other"):
        fig.add_trace(go.Bar(x=df["step"], y=df[f"{part}_ms"], name=part, marker_color=LATENCY_COLORS[part],
                             hovertemplate=f"step %{{x}}<br>{part}: %{{y:.1f}} ms<extra></extra>"))
    fig.update_layout(template=PLOT_TEMPLATE, barmode="stack", title="time per step",
                      xaxis_title="step (target forward)", yaxis_title="ms", height=340,
                      margin=dict(l=20, r=20, t=50, b=20), legend=dict(orientation="h", y=1.12))
    return fig


def tokens_over_time(trace: Trace) -> tuple[list[float], list[int]]:
    """(seconds, cumulative committed tokens), starting at (0, 0)."""
    xs, ys, total = [0.0], [0], 0
    for s in trace.steps:
        total += len(s.committed)
        xs.append(s.t_end)
        ys.append(total)
    return xs, ys


def tokens_time_figure(series: dict[str, Trace] | Sequence[tuple[str, Trace]]) -> go.Figure:
    """Tokens generated against time, one line per labelled trace (e.g. a method and its baseline)."""
    items = list(series.items()) if isinstance(series, dict) else list(series)
    fig = go.Figure()
    for label, tr in items:
        xs, ys = tokens_over_time(tr)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=label, line_shape="hv",
                                 hovertemplate="%{x:.3f} s: %{y} tokens<extra>" + html.escape(label) + "</extra>"))
    fig.update_layout(template=PLOT_TEMPLATE, title="tokens generated vs time", xaxis_title="seconds",
                      yaxis_title="tokens", height=340, margin=dict(l=20, r=20, t=50, b=20),
                      legend=dict(orientation="h", y=1.12))
    return fig


def acceptance_counts(trace: Trace) -> list[int]:
    """counts[k] = number of drafted steps that accepted exactly k draft tokens."""
    counts: list[int] = []
    for s in trace.steps:
        if s.kind != "decode" or not s.tokens:
            continue
        while len(counts) <= s.n_accepted:
            counts.append(0)
        counts[s.n_accepted] += 1
    return counts


def acceptance_histogram_figure(trace: Trace) -> go.Figure:
    counts = acceptance_counts(trace)
    fig = go.Figure(go.Bar(x=list(range(len(counts))), y=counts, marker_color=TREE_COLORS["accepted"],
                           name="steps", hovertemplate="%{x} accepted: %{y} steps<extra></extra>"))
    fig.update_layout(template=PLOT_TEMPLATE, height=300, margin=dict(l=20, r=20, t=50, b=20),
                      title="accepted draft tokens per step" + ("" if counts else " (nothing drafted)"),
                      xaxis=dict(title="accepted draft tokens", dtick=1), yaxis_title="steps")
    return fig


def acceptance_position_figure(trace: Trace) -> go.Figure:
    """α_k: acceptance rate at draft position k, given positions < k were accepted."""
    alphas = trace.summary().acceptance_by_position
    ks = [k + 1 for k, a in enumerate(alphas) if not _nan(a)]
    vals = [a for a in alphas if not _nan(a)]
    fig = go.Figure(go.Bar(x=ks, y=vals, marker_color=LATENCY_COLORS["draft"], name="α",
                           hovertemplate="position %{x}: α = %{y:.2f}<extra></extra>"))
    fig.update_layout(template=PLOT_TEMPLATE, height=300, margin=dict(l=20, r=20, t=50, b=20),
                      title="acceptance rate by draft position" + ("" if ks else " (nothing drafted)"),
                      xaxis=dict(title="draft position k", dtick=1), yaxis=dict(title="α_k", range=[0, 1.05]))
    return fig


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font=dict(size=14, color="#888"), x=0.5, y=0.5,
                       xref="paper", yref="paper")
    fig.update_layout(template=PLOT_TEMPLATE, height=240, xaxis=dict(visible=False), yaxis=dict(visible=False),
                      margin=dict(l=20, r=20, t=20, b=20))
    return fig
