"""What a run's quality looks like: the lossless/lossy badge, the quality card, and the speed-quality Pareto plot.

A run's quality is measured against the target's plain decoding of the same prompt (workbench.quality,
docs/quality.md) and stored with it as a dict (Quality.to_dict()); everything here reads those dicts, so
a notebook draws the same pictures from stored runs or a benchmark report.

The Pareto plot puts one point per run (History: tokens/s) or per benchmark arm (a report: speedup over
plain decoding) against a chosen quality measure (workbench.quality.MEASURES). A lossless point sits on the
reference line by definition (quality 1, or an NLL gap of 0: its outputs are the target's own, exactly in
distribution; under greedy decoding the accounting checks it token for token); the task score, an absolute
measure, is plotted as measured. The front joins the points no other point beats on both axes; the arms of a
``bench --sweep`` over one knob are joined in knob order, one curve per method.
"""
from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from workbench.quality import MEASURES, REFERENCE, check_measure, describe, lossy_badge, pareto_front, quality_value

from .base import PLOT_TEMPLATE, _get, _nan

LOSSLESS_COLOR, LOSSY_COLOR = "#2e9d4a", "#c0392b"


def badge_html(lossy: Sequence[str]) -> str:
    """The lossless/lossy badge: green "lossless", or red "LOSSY" with what made the run so as its tooltip."""
    color = LOSSLESS_COLOR if not lossy else LOSSY_COLOR
    text = "lossless" if not lossy else "LOSSY"
    title = html.escape(lossy_badge(lossy), quote=True)
    return (f"<span class='wb-badge' title='{title}' style='background:{color};color:white;border-radius:4px;"
            f"padding:1px 6px;font-size:0.85em'>{text}</span>")


def _pct(x: Any) -> str:
    return "—" if _nan(x) else f"{100 * float(x):.1f}%"


def quality_card_html(quality: dict[str, Any] | None, lossy: Sequence[str] = ()) -> str:
    """The Playground's quality card: the badge, each measure against plain decoding, and what made it lossy."""
    head = badge_html(lossy)
    if not quality:
        return (f"<div class='wb-quality'>{head} <b>Quality vs plain decoding</b>: not measured "
                f"(turn the accounting on, or no plain decoding to compare with)</div>")
    div = quality.get("first_divergence")
    base = quality.get("baseline_run")
    gap = quality.get("nll_gap")
    rows = [
        ("token agreement", _pct(quality.get("agreement"))),
        ("agreement to the first divergence", _pct(quality.get("prefix_agreement"))),
        ("first divergence", "none (identical)" if div is None else f"token {div}"),
        ("ROUGE-L (words)", "—" if _nan(quality.get("rouge_l")) else f"{quality['rouge_l']:.3f}"),
        ("NLL gap (nats/token)", "—" if _nan(gap) else
         f"{gap:+.3f} ({quality.get('nll', 0):.3f} vs {quality.get('baseline_nll', 0):.3f})"),
    ]
    if quality.get("task_score") is not None:
        rows.append(("task score", f"{quality['task_score']:.1f} ({quality.get('task_check')})"))
    body = "".join(f"<tr><td>{html.escape(k)}</td><td><b>{html.escape(v)}</b></td></tr>" for k, v in rows)
    against = f"stored plain run {html.escape(str(base)[:8])}" if base else "plain decoding of this prompt, run now"
    why = "" if not lossy else "<div>lossy: " + html.escape("; ".join(lossy)) + "</div>"
    return (f"<div class='wb-quality'>{head} <b>Quality vs plain decoding</b> (against {against})"
            f"<table>{body}</table>{why}</div>")


def run_points(runs: Sequence[Any], measure: str = "agreement") -> list[dict[str, Any]]:
    """One Pareto point per finished run (store.RunRecord or a dict with its keys): tokens/s against quality."""
    out = []
    for r in runs:
        if _get(r, "status", "finished") != "finished":
            continue
        lossless = bool(_get(r, "lossless", True)) and not _get(r, "lossy", None)
        tps = (_get(r, "metrics", None) or {}).get("tokens_per_s")
        out.append({"label": f"{_get(r, 'method', '')} {str(_get(r, 'id', ''))[:8]}", "method": _get(r, "method", ""),
                    "speed": math.nan if tps is None else float(tps), "lossless": lossless,
                    "quality": quality_value(_get(r, "quality", None), measure, lossless),
                    "lossy": list(_get(r, "lossy", None) or []), "curve": None, "knob": None})
    return out


def bench_points(rows: Sequence[dict[str, Any]], measure: str = "agreement", category: str = "all",
                 names: dict[tuple[str, str], str] | None = None) -> list[dict[str, Any]]:
    """One Pareto point per benchmark arm (its report row for `category`): speedup against quality. A swept arm
    (row["swept"]) joins its method's curve, ordered by the swept value."""
    out = []
    for row in rows:
        if row.get("category") != category:
            continue
        lossless = bool(row.get("lossless", True)) and not row.get("lossy")
        swept = row.get("swept") or {}
        key = (row.get("arm"), row.get("backend"))
        out.append({"label": (names or {}).get(key, row.get("arm")), "method": row.get("method"),
                    "speed": float(row.get("speedup", math.nan)), "lossless": lossless,
                    "quality": quality_value({measure: row.get(measure)}, measure, lossless),
                    "lossy": list(row.get("lossy") or []),
                    "curve": f"{row.get('method')} ({', '.join(swept)}, {row.get('backend')})" if swept else None,
                    "knob": tuple(swept.values()) if swept else None})
    return out


def _sort_key(value: Any) -> tuple:
    return tuple((0, v) if isinstance(v, (int, float)) else (1, str(v)) for v in value or ())


def pareto_figure(points: Sequence[dict[str, Any]], measure: str = "agreement", *,
                  speed_label: str = "tokens/s", title: str = "") -> go.Figure:
    """Speed (x) against quality (y): lossless points green, lossy red; the reference line, the front and each
    sweep's curve."""
    check_measure(measure)
    fig = go.Figure()
    for curve in dict.fromkeys(p["curve"] for p in points if p["curve"]):
        mine = sorted((p for p in points if p["curve"] == curve), key=lambda p: _sort_key(p["knob"]))
        fig.add_trace(go.Scatter(x=[p["speed"] for p in mine], y=[p["quality"] for p in mine], mode="lines",
                                 name=f"sweep: {curve}", line={"dash": "dot"}, hoverinfo="skip"))
    front = pareto_front(points, measure)
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=[p["speed"] for p in front], y=[p["quality"] for p in front], mode="lines",
                                 name="Pareto front", line={"color": "#888888", "width": 1}, hoverinfo="skip"))
    for lossless, color, name, symbol in ((True, LOSSLESS_COLOR, "lossless", "circle"),
                                          (False, LOSSY_COLOR, "lossy", "x")):
        mine = [p for p in points if p["lossless"] == lossless]
        if not mine:
            continue
        fig.add_trace(go.Scatter(
            x=[p["speed"] for p in mine], y=[p["quality"] for p in mine], mode="markers+text", name=name,
            text=[p["label"] for p in mine], textposition="top center", textfont={"size": 9},
            marker={"color": color, "size": 10, "symbol": symbol},
            hovertext=[f"{p['label']}: {lossy_badge(p['lossy'])}" for p in mine], hoverinfo="text+x+y"))
    if measure in REFERENCE:
        fig.add_hline(y=REFERENCE[measure], line_dash="dash", line_color=LOSSLESS_COLOR,
                      annotation_text="lossless", annotation_position="bottom right")
    fig.update_layout(template=PLOT_TEMPLATE, title=title or f"Speed vs {MEASURES[measure]}",
                      xaxis_title=speed_label, yaxis_title=MEASURES[measure], height=420,
                      margin={"l": 50, "r": 20, "t": 50, "b": 40})
    return fig


def quality_text(quality: dict[str, Any] | None) -> str:
    """A stored quality as one line (workbench.quality.describe)."""
    return describe(quality)
