"""Presenters: pure functions from a Trace (and plain token strings) to figures, HTML and tables.

Every view in the app is drawn here, so a notebook can draw the same pictures
from a Trace without Gradio: ``token_html(trace, texts)`` for the coloured
output, ``tree_figure(step, ...)`` for one step's draft tree,
``latency_figure(trace)`` and friends for timings, ``token_diff_html`` to
compare two outputs. Nothing here imports gradio, torch or the store; a
tokenizer never comes in, only the strings it produced (one per token).

Token origins (the colours of the output view):
- ``draft``: a draft token the target accepted;
- ``bonus``: the target's own token after the whole draft path was accepted;
- ``correction``: the target's own token replacing a rejected draft token;
- ``plain``: the target's own token in a step with no draft (prefill, plain decoding).
"""
from __future__ import annotations

import difflib
import html
import math
from typing import Any, Iterable, Sequence

import pandas as pd
import plotly.graph_objects as go

from workbench import tree_shape
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


# ---------------------------------------------------------------- small helpers


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


# ---------------------------------------------------------------- output tokens


def token_rows(trace: Trace) -> list[dict[str, Any]]:
    """trace.token_origins() with ``kind`` in draft / bonus / correction / plain."""
    by_index = {s.index: s for s in trace.steps}
    rows = trace.token_origins()
    for r in rows:
        r["kind"] = "draft" if r["origin"] == "draft" else step_outcome(by_index[r["step"]])
    return rows


def token_title(row: dict[str, Any]) -> str:
    """Hover text of one output token."""
    parts = [f"step {row['step']}", ORIGIN_LABELS[row["kind"]]]
    if row["kind"] == "draft":
        q = row.get("q")
        parts.append("q=" + (_fmt_prob(q) if q is not None else "— (deterministic draft)"))
    parts.append("p=" + _fmt_prob(row.get("p")))
    return " · ".join(parts)


def token_html(trace: Trace, texts: Sequence[str], *, show_prompt: str | None = None,
               highlight_step: int | None = None) -> str:
    """The output, one span per token coloured by origin, with a hover title (step, q, p).

    texts[i] is the text of output token i (len(texts) may lag behind while streaming);
    the tokens of step ``highlight_step`` get an outline.
    """
    rows = token_rows(trace)
    out = ['<div class="wb-output" style="white-space:pre-wrap;line-height:1.9;font-family:ui-monospace,'
           'SFMono-Regular,Menlo,monospace;font-size:14px">']
    if show_prompt:
        out.append(f'<span class="wb-prompt" style="color:#888">{html.escape(show_prompt)}</span>')
    for i, row in enumerate(rows):
        text = texts[i] if i < len(texts) else ""
        kind = row["kind"]
        shown = html.escape(visible(text.replace("\n", "↵"))) if text else "∅"
        mark = ";outline:2px solid #333" if highlight_step is not None and row["step"] == highlight_step else ""
        span = (f'<span class="wb-tok wb-tok-{kind}" data-step="{row["step"]}" '
                f'style="background:{ORIGIN_COLORS[kind]};border-radius:3px;padding:1px 0{mark}" '
                f'title="{html.escape(token_title(row), quote=True)}">{shown}</span>')
        out.append(span)
        if "\n" in text:
            out.append("\n")
    if not rows:
        out.append('<span class="wb-empty" style="color:#888">(no tokens yet)</span>')
    out.append("</div>")
    return "".join(out)


def legend_html(kinds: Iterable[str] = ("draft", "bonus", "correction", "plain")) -> str:
    items = "".join(
        f'<span class="wb-legend-item" style="margin-right:14px;white-space:nowrap">'
        f'<span class="wb-tok-{k}" style="display:inline-block;width:14px;height:14px;border-radius:3px;'
        f'vertical-align:middle;background:{ORIGIN_COLORS[k]};border:1px solid #0002"></span> '
        f'{html.escape(ORIGIN_LABELS[k])}</span>'
        for k in kinds)
    return f'<div class="wb-legend" style="font-size:13px;margin:4px 0">{items}</div>'


# ---------------------------------------------------------------- metric cards


def speedup(tokens_per_s: float, baseline_tokens_per_s: float | None) -> float:
    if _nan(baseline_tokens_per_s) or not baseline_tokens_per_s or _nan(tokens_per_s):
        return float("nan")
    return tokens_per_s / baseline_tokens_per_s


def metric_cards_html(trace: Trace, baseline_tokens_per_s: float | None = None, *,
                      baseline_note: str = "") -> str:
    """Cards: tokens/s, τ, acceptance rate, target forwards, TTFT and speedup vs plain decoding."""
    s = live_summary(trace)
    sp = speedup(s.tokens_per_s, baseline_tokens_per_s)
    if trace.method == "autoregressive":
        sp_text, sp_hint = "1.00×", "this run is plain decoding"
    elif _nan(sp):
        sp_text, sp_hint = "—", baseline_note or "no plain-decoding run of this prompt yet"
    else:
        sp_text, sp_hint = f"{sp:.2f}×", baseline_note or f"vs {baseline_tokens_per_s:.1f} tok/s plain decoding"
    alpha = "—" if _nan(s.acceptance_rate) else f"{100 * s.acceptance_rate:.0f}%"
    cards = [
        ("tokens_per_s", "tokens/s", "—" if _nan(s.tokens_per_s) else f"{s.tokens_per_s:.1f}",
         f"{s.new_tokens} tokens in {s.wall_s:.2f} s" if s.wall_s else f"{s.new_tokens} tokens"),
        ("tau", "τ (tokens / target forward)",
         "—" if _nan(s.mean_accepted_tokens) else f"{s.mean_accepted_tokens:.2f}",
         "" if _nan(s.mean_accepted_draft_tokens) else f"{s.mean_accepted_draft_tokens:.2f} without the bonus token"),
        ("acceptance_rate", "acceptance rate α", alpha,
         f"{s.accepted_draft_tokens} / {s.drafted_tokens} drafted tokens accepted" if s.drafted_tokens
         else "nothing drafted"),
        ("target_forward_passes", "target forwards", str(s.target_forward_passes), "one per step"),
        ("ttft", "TTFT", "—" if _nan(s.ttft_s) else f"{1000 * s.ttft_s:.0f} ms", "time to first token"),
        ("speedup", "speedup", sp_text, sp_hint),
    ]
    body = "".join(
        f'<div class="wb-card" data-metric="{key}" style="flex:1 1 96px;min-width:96px;border:1px solid #0001;'
        f'border-radius:8px;padding:8px 12px;background:#fafafa;color:#222">'
        f'<div style="font-size:12px;color:#666">{html.escape(label)}</div>'
        f'<div class="wb-card-value" style="font-size:22px;font-weight:600">{html.escape(value)}</div>'
        f'<div style="font-size:11px;color:#888">{html.escape(hint)}</div></div>'
        for key, label, value, hint in cards)
    return f'<div class="wb-cards" style="display:flex;flex-wrap:wrap;gap:8px">{body}</div>'


# ---------------------------------------------------------------- draft tree


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
    title = (f"step {step.index}: {n} draft node{'s' * (n != 1)}, {len(step.accepted)} accepted"
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


# ---------------------------------------------------------------- latency


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


# ---------------------------------------------------------------- history and comparison


def _get(rec: Any, key: str, default: Any = None) -> Any:
    return rec.get(key, default) if isinstance(rec, dict) else getattr(rec, key, default)


def _short(text: str | None, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


RUN_COLUMNS = ["id", "date", "method", "status", "tok/s", "τ", "α", "tokens", "target", "draft", "prompt"]


def runs_frame(records: Sequence[Any]) -> pd.DataFrame:
    """The history table: one row per run record (store.RunRecord or a dict with the same keys)."""
    rows = []
    for r in records:
        m = _get(r, "metrics", {}) or {}
        created = _get(r, "created_at")
        rows.append({
            "id": str(_get(r, "id", ""))[:8],
            "date": created.astimezone().strftime("%Y-%m-%d %H:%M:%S") if hasattr(created, "astimezone")
            else str(created or ""),
            "method": _get(r, "method", ""),
            "target": _get(r, "target", ""),
            "draft": _get(r, "draft") or "",
            "prompt": _short(_get(r, "prompt", ""), 60),
            "status": _get(r, "status", ""),
            "tok/s": _round(m.get("tokens_per_s"), 1),
            "τ": _round(m.get("mean_accepted_tokens"), 2),
            "α": _round(m.get("acceptance_rate"), 2),
            "tokens": None if m.get("new_tokens") is None else int(m["new_tokens"]),
        })
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _round(x: Any, nd: int) -> float | None:
    return None if _nan(x) else round(float(x), nd)


COMPARE_METRICS = [
    ("tokens_per_s", "tokens/s", 1), ("mean_accepted_tokens", "τ (tokens / forward)", 2),
    ("acceptance_rate", "acceptance rate α", 3), ("target_forward_passes", "target forwards", 0),
    ("new_tokens", "new tokens", 0), ("ttft_s", "TTFT (s)", 3), ("wall_s", "wall (s)", 3),
    ("mean_draft_length", "mean draft length", 2), ("peak_mem_mb", "peak memory (MB)", 0),
]


def compare_frame(records: Sequence[Any], baseline_tokens_per_s: float | None = None) -> pd.DataFrame:
    """Runs side by side: one column per run, one row per metric (plus method/models/status)."""
    data: dict[str, list[Any]] = {"": ["method", "target", "draft", "status"]
                                  + [label for _, label, _ in COMPARE_METRICS] + ["speedup vs first"]}
    first_tps = None
    for r in records:
        m = _get(r, "metrics", {}) or {}
        tps = m.get("tokens_per_s")
        if first_tps is None:
            first_tps = tps
        col = [_get(r, "method", ""), _get(r, "target", ""), _get(r, "draft") or "—", _get(r, "status", "")]
        for key, _, nd in COMPARE_METRICS:
            v = m.get(key)
            col.append("—" if _nan(v) else (f"{v:.{nd}f}" if nd else f"{v:.0f}"))
        sp = speedup(tps if tps is not None else float("nan"), first_tps)
        col.append("—" if _nan(sp) else f"{sp:.2f}×")
        name = str(_get(r, "id", ""))[:8]
        while name in data:
            name += "'"
        data[name] = col
    return pd.DataFrame(data)


def token_diff_html(a: Sequence[str], b: Sequence[str], a_label: str = "A", b_label: str = "B") -> str:
    """Token-level diff of two outputs: tokens only in A struck through (red), only in B underlined (green)."""
    sm = difflib.SequenceMatcher(a=list(a), b=list(b), autojunk=False)
    parts: list[str] = []
    changed = 0

    def spans(tokens: Sequence[str], cls: str, style: str) -> str:
        return "".join(f'<span class="wb-diff-{cls}" style="{style}">'
                       f'{html.escape(visible(t.replace(chr(10), "↵"))) or "∅"}</span>' for t in tokens)

    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            parts.append(spans(a[i1:i2], "eq", ""))
            continue
        changed += max(i2 - i1, j2 - j1)
        if i2 > i1:
            parts.append(spans(a[i1:i2], "del", "background:#ffd4d4;text-decoration:line-through;color:#900"))
        if j2 > j1:
            parts.append(spans(b[j1:j2], "ins", "background:#d2f5d6;text-decoration:underline;color:#065"))
    if changed == 0:
        head = f"Outputs are token-identical ({len(a)} tokens)."
    else:
        head = (f"{changed} token position{'s' * (changed != 1)} differ · "
                f"{len(a)} tokens in {html.escape(a_label)}, {len(b)} in {html.escape(b_label)} · "
                f"similarity {sm.ratio():.2f}")
    legend = "" if changed == 0 else (
        f'<span class="wb-diff-del" style="background:#ffd4d4;text-decoration:line-through">only in '
        f'{html.escape(a_label)}</span> <span class="wb-diff-ins" style="background:#d2f5d6;'
        f'text-decoration:underline">only in {html.escape(b_label)}</span>')
    return (f'<div class="wb-diff" data-changed="{changed}"><div style="font-size:13px;margin-bottom:4px">'
            f'<b>{html.escape(a_label)} → {html.escape(b_label)}</b>: {head} {legend}</div>'
            f'<div style="white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:13px;'
            f'line-height:1.8">{"".join(parts)}</div></div>')
