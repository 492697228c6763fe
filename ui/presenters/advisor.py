"""An advice (``workbench advise``, a stored advice dict) as tables, text and a figure.

``advice_ranking_frame`` ranks every probed configuration with its predicted speedup, interval and
what holds it back; ``advice_verification_frame`` sets predicted against measured per verified
configuration and category; ``advice_markdown`` is the explanation with the reproducing command;
``ceiling_figure`` draws the speedup a perfect drafter could reach here for each draft length (the
ceiling), with each configuration's prediction and measurement against its draft depth, and the same
ceiling on each what-if machine; ``advice_list_frame`` lists past advice. Rows come from
workbench.advisor.report, which reads the stored advice and computes nothing.
"""
from __future__ import annotations

import html
import math
from typing import Any, Sequence

import pandas as pd
import plotly.graph_objects as go

from workbench.advisor.report import headline, list_rows, ranking_rows, verification_rows

from .base import PLOT_TEMPLATE
from .latency import empty_figure

SHOWN_K = 16  # the x axis reaches at least this draft length (further when a configuration drafts deeper)
KIND_COLORS = {"no draft model": "#2e9d4a", "trained head": "#1f6fd1", "draft model": "#e8772e"}


def _r(x: Any, digits: int = 2) -> Any:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), digits)


def _interval(lo: Any, hi: Any) -> str:
    return "-" if _r(lo) is None or _r(hi) is None else f"{lo:.2f}–{hi:.2f}"


def advice_ranking_frame(advice: dict[str, Any] | None) -> pd.DataFrame:
    """One row per probed configuration, best predicted first."""
    cols = ["rank", "configuration", "drafts with", "predicted ×", "90% interval", "τ (probe)", "α₁",
            "draft ×", "verify ×", "held back by", "measured ×"]
    rows = [[r["rank"], r["configuration"], r["kind"], _r(r["predicted"]), _interval(r["low"], r["high"]),
             _r(r["tau"]), _r(r["alpha_1"]), _r(r["draft_x"]), _r(r["verify_x"]), r["holds_back"],
             _r(r["measured"])] for r in ranking_rows(advice or {})]
    return pd.DataFrame(rows, columns=cols)


def advice_verification_frame(advice: dict[str, Any] | None) -> pd.DataFrame:
    """Predicted against measured, per verified configuration and category."""
    cols = ["configuration", "category", "predicted ×", "90% interval", "measured ×", "error %"]
    rows = [[r["label"], r["category"], _r(r["predicted"]), _interval(r.get("low"), r.get("high")),
             _r(r["measured"]), _r(r["error_pct"], 0)] for r in verification_rows(advice or {})]
    return pd.DataFrame(rows, columns=cols)


def advice_markdown(advice: dict[str, Any] | None) -> str:
    """The headline, the explanation, the notes and the command that reproduces the advice."""
    if not advice:
        return ""
    r = advice.get("result") or {}
    parts = [f"**{html.escape(headline(advice))}**"]
    parts += [f"- {html.escape(line)}" for line in r.get("explanation", [])]
    parts += [f"- *note:* {html.escape(n)}" for n in r.get("notes", [])]
    probe = (r.get("probe") or {}).get("benchmark_id")
    verify = (r.get("verification") or {}).get("benchmark_id")
    if probe or verify:
        parts.append(f"Probe benchmark `{(probe or '-')[:8]}`, verification benchmark `{(verify or '-')[:8]}` "
                     "(listed in History & compare → Benchmarks).")
    parts.append(f"Reproduce:\n\n```\n{advice.get('command', '')}\n```")
    return "\n\n".join(parts)


def _ceiling_curve(profile: dict[Any, float]) -> tuple[list[int], list[float]]:
    """k -> (k + 1) t(1) / t(k + 1) at the profile's sizes (what a perfect drafter drafting k gives)."""
    prof = {int(n): float(t) for n, t in profile.items()}
    one = prof[min(prof)]
    ks = sorted(n - 1 for n in prof)
    return ks, [(k + 1) * one / prof[k + 1] for k in ks]


def ceiling_figure(advice: dict[str, Any] | None) -> go.Figure:
    """The ceiling here (and on each what-if machine) against draft length; each configuration at its
    mean draft depth: predicted (with its interval) and, when verified, measured."""
    fig = go.Figure()
    r = (advice or {}).get("result") or {}
    target = (r.get("profile") or {}).get("target")
    if not target:
        return empty_figure("no advice to draw")
    ks, ys = _ceiling_curve(target)
    fig.add_trace(go.Scatter(x=ks, y=ys, mode="lines+markers", name="ceiling here (perfect drafter)",
                             line={"color": "#555555"}, marker={"size": 5}))
    for w in r.get("what_ifs", []):
        wk, wy = _ceiling_curve(w["seconds"])
        fig.add_trace(go.Scatter(x=wk, y=wy, mode="lines", name=f"ceiling on {w['name']}",
                                 line={"dash": "dash"}))
    fig.add_hline(y=1.0, line={"color": "#b8b8b8", "dash": "dot"}, annotation_text="plain decoding",
                  annotation_position="bottom right")
    measured = {row["configuration"]: row["measured"] for row in ranking_rows(advice or {})}
    for kind, color in KIND_COLORS.items():
        mine = [c for c in r.get("configs", []) if c["kind"] == kind]
        if not mine:
            continue
        p = [c["predicted"] for c in mine]
        fig.add_trace(go.Scatter(
            x=[c["measured"]["mean_depth"] for c in mine], y=[x["speedup"] for x in p], mode="markers",
            name=f"predicted ({kind})", marker={"color": color, "size": 9},
            error_y={"type": "data", "symmetric": False,
                     "array": [max(0.0, (x["high"] or x["speedup"]) - x["speedup"]) for x in p],
                     "arrayminus": [max(0.0, x["speedup"] - (x["low"] or x["speedup"])) for x in p]},
            text=[c["label"] for c in mine], hovertemplate="%{text}: predicted %{y:.2f}x<extra></extra>"))
        done = [c for c in mine if measured.get(c["label"]) is not None]
        if done:
            fig.add_trace(go.Scatter(
                x=[c["measured"]["mean_depth"] for c in done], y=[measured[c["label"]] for c in done],
                mode="markers", name=f"measured ({kind})", marker={"color": color, "size": 11, "symbol": "x"},
                text=[c["label"] for c in done], hovertemplate="%{text}: measured %{y:.2f}x<extra></extra>"))
    depths = [c["measured"]["mean_depth"] for c in r.get("configs", [])]
    right = min(max(ks), max([SHOWN_K] + [2 * d for d in depths]))  # the drafts the configurations reach, and more
    shown = [y for k, y in zip(ks, ys) if k <= right] + [c["predicted"]["high"] or 0 for c in r.get("configs", [])]
    c = r.get("ceiling") or {}
    fig.update_layout(template=PLOT_TEMPLATE, height=380, margin={"l": 50, "r": 20, "t": 40, "b": 40},
                      title=(f"What a perfect drafter could reach here (at most {c.get('speedup', 0):.2f}x, drafting "
                             f"{c.get('k', 0)}), and where each configuration lands"),
                      xaxis_title="tokens drafted per step (k; configurations: their mean draft depth)",
                      yaxis_title="speedup over plain decoding", legend={"orientation": "h", "y": -0.25})
    fig.update_xaxes(range=[-0.5, right + 0.5])
    fig.update_yaxes(range=[0, max(shown + [1.0]) * 1.1])
    return fig


def advice_list_frame(advice_list: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Past advice, newest first: id, when, status, target, backend, the recommendation and its measured speedup."""
    cols = ["id", "created (UTC)", "status", "target", "backend", "recommended", "measured ×", "configurations"]
    rows = [[r["id"][:8], r["created"], r["status"], r["target"], r["backend"], r["recommended"],
             _r(r["measured"]), r["configurations"]] for r in list_rows(list(advice_list))]
    return pd.DataFrame(rows, columns=cols)


def advice_label(advice: dict[str, Any]) -> str:
    """A past advice in a picker: 'id · target · recommended · when'."""
    rec = (advice.get("result") or {}).get("recommended") or advice.get("status")
    return (f"{advice['id'][:8]} · {advice['target']} · {rec} · "
            f"{(advice.get('created_at') or '')[:16].replace('T', ' ')}")


__all__ = ["advice_label", "advice_list_frame", "advice_markdown", "advice_ranking_frame",
           "advice_verification_frame", "ceiling_figure"]
