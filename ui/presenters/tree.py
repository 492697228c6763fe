"""One step's draft tree as a figure (accepted path, rejected branches, bonus token) and its attention mask."""
from __future__ import annotations

import math
from typing import Sequence

import plotly.graph_objects as go
from workbench import tree_shape
from workbench.trace import Step

from .base import (
    PLOT_TEMPLATE,
    TREE_COLORS,
    _fmt_prob,
    display_token,
    step_outcome,
)


def tree_layout(parents: Sequence[int]) -> list[tuple[float, float]]:
    """(x, y) of each node: x = depth, y = -row, leaves on successive rows in sibling order."""
    children = tree_shape.children(parents)
    pos: dict[int, tuple[float, float]] = {}
    next_row = [0]

    def place(node: int, depth: int) -> float:
        kids = children.get(node, [])
        if not kids:
            row = float(next_row[0])
            next_row[0] += 1
        else:
            rows = [place(k, depth + 1) for k in kids]
            row = rows[0]  # a parent sits on its first (most likely) child's row
        pos[node] = (float(depth), -row)
        return row

    place(-1, 0)
    return [pos[i] for i in range(len(parents))]


def tree_figure(step: Step, node_texts: Sequence[str], *, root_text: str = "", bonus_text: str = "") -> go.Figure:
    """One step's draft tree: nodes labelled with their token, the accepted path highlighted,
    rejected branches dimmed, the target's bonus/correction token as an extra node."""
    n = len(step.tokens)
    pos = tree_layout(step.parents)
    accepted = set(step.accepted)
    rows_used = [y for _, y in pos] or [0.0]
    fig = go.Figure()

    # edges: all (dim) and the accepted path (highlighted)
    ex, ey = [], []
    for i, par in enumerate(step.parents):
        x0, y0 = (0.0, 0.0) if par < 0 else pos[par]
        ex += [x0, pos[i][0], None]
        ey += [y0, pos[i][1], None]
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", name="draft edges", hoverinfo="skip",
                             line=dict(color=TREE_COLORS["edge"], width=1.5), showlegend=False))
    path_xy = [(0.0, 0.0)] + [pos[i] for i in step.accepted]
    fig.add_trace(go.Scatter(x=[p[0] for p in path_xy], y=[p[1] for p in path_xy], mode="lines",
                             name="accepted path", hoverinfo="skip",
                             line=dict(color=TREE_COLORS["accepted"], width=4)))

    def node_trace(name: str, idx: list[int], color: str, opacity: float) -> None:
        if not idx:
            return
        custom = [[i, _fmt_prob(step.q[i] if i < len(step.q) else None),
                   _fmt_prob(step.p[i] if i < len(step.p) else None), display_token(node_texts[i])] for i in idx]
        fig.add_trace(go.Scatter(
            x=[pos[i][0] for i in idx], y=[pos[i][1] for i in idx], mode="markers+text", name=name,
            text=[display_token(node_texts[i]) for i in idx], textposition="top center",
            marker=dict(size=18, color=[color] * len(idx), line=dict(color="#fff", width=1)),
            opacity=opacity, customdata=custom,
            hovertemplate="node %{customdata[0]}: %{customdata[3]}<br>q (draft) = %{customdata[1]}"
                          "<br>p (target) = %{customdata[2]}<extra>" + name + "</extra>"))

    node_trace("accepted", [i for i in step.accepted], TREE_COLORS["accepted"], 1.0)
    node_trace("rejected", [i for i in range(n) if i not in accepted], TREE_COLORS["rejected"], 0.45)
    fig.add_trace(go.Scatter(x=[0], y=[0], mode="markers+text", name="root",
                             text=[display_token(root_text) if root_text else "root"], textposition="top center",
                             marker=dict(size=16, color=TREE_COLORS["root"], symbol="square"),
                             hovertemplate="root: last committed token<extra></extra>"))

    by_min = 0.0
    if step.bonus_token >= 0 and step.committed:
        kind = step_outcome(step)  # plain / bonus / correction
        last = step.accepted[-1] if step.accepted else -1
        px, py = (0.0, 0.0) if last < 0 else pos[last]
        # a bonus token continues its (leaf) parent's row; a correction goes on a row of its own
        bx, by = px + 1, (min(rows_used) - 1 if kind == "correction" else py)
        by_min = by
        fig.add_trace(go.Scatter(x=[px, bx], y=[py, by], mode="lines", name=f"{kind} edge", hoverinfo="skip",
                                 line=dict(color=TREE_COLORS[kind], width=2, dash="dot"), showlegend=False))
        label = {"bonus": "bonus token", "correction": "correction", "plain": "target token"}[kind]
        fig.add_trace(go.Scatter(
            x=[bx], y=[by], mode="markers+text", name=label, text=[display_token(bonus_text)],
            textposition="bottom center",
            marker=dict(size=20, color=TREE_COLORS[kind], symbol="diamond"),
            customdata=[[_fmt_prob(None if math.isnan(step.bonus_p) else step.bonus_p), display_token(bonus_text)]],
            hovertemplate=f"{label}: %{{customdata[1]}}<br>p (target) = %{{customdata[0]}}<extra></extra>"))

    depth = max([x for x, _ in pos] + [1.0])
    block = n > 0 and step.draft_forwards == 1  # the whole draft came from one drafter forward
    if block:  # a shaded band around the block's nodes: drafted together, not one token after another
        xs, ys = [x for x, _ in pos], [y for _, y in pos]
        fig.add_shape(type="rect", name="one-forward block", x0=min(xs) - 0.4, x1=max(xs) + 0.4,
                      y0=min(ys) - 0.45, y1=max(ys) + 0.55, line=dict(color=TREE_COLORS["accepted"], dash="dash"),
                      fillcolor="rgba(46,157,74,0.07)", layer="below")
        fig.add_annotation(x=(min(xs) + max(xs)) / 2, y=max(ys) + 0.55, yanchor="bottom", showarrow=False,
                           text=f"block drafted in one forward ({step.draft_s * 1e3:.1f} ms; "
                                f"verified in {step.verify_s * 1e3:.1f} ms)")
    title = (f"step {step.index}: {n} draft node{'s' * (n != 1)}{' in one forward' if block else ''}, "
             f"{len(step.accepted)} accepted"
             if n else f"step {step.index}: no draft (the target decoded one token)")
    rows = rows_used + [by_min]
    fig.update_layout(template=PLOT_TEMPLATE, title=title, height=max(300, 80 * (len(set(rows)) + 1)),
                      margin=dict(l=20, r=20, t=50, b=20), legend=dict(orientation="h", y=-0.08),
                      xaxis=dict(title="depth", dtick=1, range=[-0.5, depth + 1.6], zeroline=False),
                      yaxis=dict(visible=False, range=[min(rows) - 0.8, 0.9]))
    return fig


def attention_mask(parents: Sequence[int]) -> list[list[bool]]:
    """Tree attention among [root] + nodes: row r may attend to column c (root is row/column 0)."""
    return tree_shape.ancestor_rows(parents)


def is_chain(step: Step) -> bool:
    return tree_shape.is_chain(step.parents)


def mask_figure(step: Step, node_texts: Sequence[str], mask: Sequence[Sequence[bool]] | None = None) -> go.Figure:
    """The tree attention mask of one step as a heatmap (1 = may attend); computed from parents if not given."""
    mask = attention_mask(step.parents) if mask is None else mask
    labels = ["root"] + [f"{i}:{display_token(t)}" for i, t in enumerate(node_texts[: len(step.parents)])]
    fig = go.Figure(go.Heatmap(z=[[int(v) for v in row] for row in mask], x=labels, y=labels,
                               colorscale=[[0, "#f3f3f3"], [1, "#2e9d4a"]], showscale=False, xgap=1, ygap=1,
                               hovertemplate="row %{y} → column %{x}: %{z}<extra></extra>"))
    fig.update_layout(template=PLOT_TEMPLATE, title="tree attention mask (row attends to column)",
                      height=max(300, 24 * len(labels) + 120), margin=dict(l=20, r=20, t=50, b=20),
                      yaxis=dict(autorange="reversed"))
    return fig
