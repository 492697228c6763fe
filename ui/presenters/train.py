"""Trainings of drafter heads (``workbench train``): the table of trainings, loss curves, held-out accuracy, details.

Every function takes the store's training dicts (``RunStore.get_training`` /
``list_trainings``: ``curves`` ``{name: [[step, value], ...]}``, ``accuracy``
``{"top1": [per head or position], "top5": [...], ...}``, ``data``, ``timings``,
``config``) and nothing else, so a training still running with no curves yet,
or one interrupted halfway, draws as what it has. ``exposed=True`` (a shared
server, ui.exposure) leaves out the output folder and shortens every local path
to its last part.
"""
from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Any, Sequence

import pandas as pd
import plotly.graph_objects as go

from .base import PLOT_TEMPLATE, _nan
from .latency import empty_figure

TRAINING_COLUMNS = ["id", "when", "kind", "target", "status", "responses", "tokens", "steps", "top-1 per head",
                    "time"]
DATA_LABELS = {"prompts": "prompts", "self_prompts": "self-written prompts", "responses": "responses",
               "tokens": "tokens",
               "train_responses": "training responses", "heldout_responses": "held-out responses",
               "heldout_tokens": "held-out tokens"}
TIMING_LABELS = {"prompts_s": "prompts", "generate_s": "generate", "features_s": "features", "train_s": "train",
                 "evaluate_s": "evaluate", "total_s": "total"}
ACCURACY_COLORS = {"top1": "#2e9d4a", "top5": "#8fd19e"}
ACCURACY_LABELS = {"top1": "top-1", "top5": "top-5"}
HIDDEN = "(hidden on a shared server)"
OUT_KEYS = ("out", "out_dir")  # settings that name the output folder: hidden like out_dir on a shared server
_LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.22)  # many curves: their legend takes rows
_PATH = re.compile(r"(?<![\w.~-])(?:~|\.{1,2})?/[^\s'\"`,;()\[\]{}]*")


def redact_paths(text: str) -> str:
    """Local paths in `text` shortened to their last part ('/home/me/heads/eagle' -> '…/eagle')."""
    return _PATH.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def _shown(text: Any, exposed: bool) -> str:
    text = "" if text is None else str(text)
    return redact_paths(text) if exposed else text


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, str) and value:
        try:
            return _time(datetime.fromisoformat(value))
        except ValueError:
            return None
    return None


def duration_text(seconds: Any) -> str:
    """'0.4 s', '42 s', '6 min 35 s', '1 h 02 min'; '—' when unknown."""
    if not _finite(seconds) or seconds < 0:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def training_seconds(t: dict[str, Any], now: datetime | None = None) -> float | None:
    """The training's total time: timings.total_s, else finished − created, else (running) now − created."""
    total = (t.get("timings") or {}).get("total_s")
    if _finite(total):
        return float(total)
    start, end = _time(t.get("created_at")), _time(t.get("finished_at"))
    if start is None:
        return None
    if end is None:
        if t.get("status") != "running":
            return None
        end = now or datetime.now(timezone.utc)
    return max((end - start).total_seconds(), 0.0)


def curve_points(points: Any) -> tuple[list[float], list[float | None]]:
    """(steps, values) of one curve; malformed points are skipped, null values kept (a gap in the line)."""
    xs: list[float] = []
    ys: list[float | None] = []
    for p in points if isinstance(points, (list, tuple)) else []:
        if not isinstance(p, (list, tuple)) or len(p) < 2 or not _finite(p[0]):
            continue
        xs.append(p[0])
        ys.append(float(p[1]) if _finite(p[1]) else None)
    return xs, ys


def last_step(t: dict[str, Any]) -> int | None:
    """The highest step any curve has reached (None before the first point)."""
    steps = [x for pts in (t.get("curves") or {}).values() for x in curve_points(pts)[0]]
    return int(max(steps)) if steps else None


def planned_steps(t: dict[str, Any]) -> int | None:
    n = (t.get("config") or {}).get("steps")
    return int(n) if _finite(n) and n > 0 else None


def head_unit(kind: str | None) -> str:
    """What the accuracy lists are indexed by: Medusa and Hydra have heads, EAGLE and a draft model positions."""
    return "head" if kind in ("medusa", "hydra") else "position"


def _numbers(values: Any) -> list[float | None] | None:
    if not isinstance(values, (list, tuple)) or not values:
        return None
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
        return None
    return [None if _nan(v) else float(v) for v in values]


def accuracy_text(values: Any, nd: int = 2) -> str:
    """'0.61 · 0.38 · 0.22' ('—' for a missing value, '' when there is no list)."""
    nums = _numbers(values)
    return "" if nums is None else " · ".join("—" if v is None else f"{v:.{nd}f}" for v in nums)


def _count(value: Any) -> int | None:
    return int(value) if _finite(value) else None


def training_label(t: dict[str, Any], exposed: bool = False) -> str:
    """'3f2a9c1e · eagle · smollm2-135m · finished · 2026-12-04 18:45' for the picker."""
    when = _time(t.get("created_at"))
    when_text = when.astimezone().strftime("%Y-%m-%d %H:%M") if when else ""
    return (f"{str(t.get('id', ''))[:8]} · {t.get('kind', '')} · {_shown(t.get('target'), exposed)} · "
            f"{t.get('status', '')} · {when_text}")


def trainings_frame(trainings: Sequence[dict[str, Any]], *, exposed: bool = False,
                    now: datetime | None = None) -> pd.DataFrame:
    """The table of trainings, one row each (newest first as given)."""
    rows = []
    for t in trainings:
        data = t.get("data") or {}
        when = _time(t.get("created_at"))
        step, planned = last_step(t), planned_steps(t)
        steps = "" if step is None else (f"{step} / {planned}" if planned and t.get("status") == "running"
                                         else str(step))
        seconds = training_seconds(t, now)
        rows.append({
            "id": str(t.get("id", ""))[:8],
            "when": when.astimezone().strftime("%Y-%m-%d %H:%M") if when else "",
            "kind": t.get("kind", ""),
            "target": _shown(t.get("target"), exposed),
            "status": t.get("status", ""),
            "responses": _count(data.get("responses")),
            "tokens": _count(data.get("tokens")),
            "steps": steps,
            "top-1 per head": accuracy_text((t.get("accuracy") or {}).get("top1")),
            "time": "" if seconds is None else ("running " if t.get("status") == "running" else "")
            + duration_text(seconds),
        })
    return pd.DataFrame(rows, columns=TRAINING_COLUMNS)


def _is_rate(name: str) -> bool:
    return name == "lr" or name.endswith("_lr") or name.startswith("lr_")


def loss_figure(t: dict[str, Any]) -> go.Figure:
    """One line per curve against the step; the learning rate on its own axis on the right."""
    curves = {k: curve_points(v) for k, v in (t.get("curves") or {}).items()}
    curves = {k: v for k, v in curves.items() if v[0]}
    if not curves:
        running = t.get("status") == "running"
        return empty_figure("no curves yet: the training is still preparing its data" if running
                            else "this training recorded no curves")
    order = sorted(curves, key=lambda k: (_is_rate(k), k != "loss", k))
    fig = go.Figure()
    for name in order:
        xs, ys = curves[name]
        rate = _is_rate(name)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines" if len(xs) > 1 else "markers", name=name,
                                 yaxis="y2" if rate else "y",
                                 line=dict(dash="dot", color="#999999") if rate else None,
                                 hovertemplate=f"step %{{x}}<br>{name}: %{{y:.4g}}<extra></extra>"))
    layout: dict[str, Any] = dict(template=PLOT_TEMPLATE, title="training curves", xaxis_title="step",
                                  yaxis_title="loss", height=380, margin=dict(l=20, r=20, t=50, b=20),
                                  legend=_LEGEND_BELOW)
    if any(_is_rate(k) for k in order):
        layout["yaxis2"] = dict(title="learning rate", overlaying="y", side="right", showgrid=False,
                                exponentformat="e")
    fig.update_layout(**layout)
    return fig


def _fractions(values: Any) -> list[float | None] | None:
    nums = _numbers(values)
    return nums if nums is not None and all(v is None or 0.0 <= v <= 1.0 for v in nums) else None


def accuracy_series(t: dict[str, Any]) -> dict[str, list[float | None]]:
    """The per-head (per-position) rates of the held-out accuracy: top1, top5, then any other list of
    fractions given, one level down too (``{"serving": {"alpha_by_position": [...]}}`` as
    "serving.alpha_by_position"). Lists of counts are not rates: training_details shows them as numbers."""
    acc = t.get("accuracy") or {}
    keys = [k for k in ("top1", "top5") if k in acc] + sorted(k for k in acc if k not in ("top1", "top5"))
    out: dict[str, list[float | None]] = {}
    for k in keys:
        if (v := _fractions(acc[k])) is not None:
            out[k] = v
        elif isinstance(acc[k], dict):
            out.update({f"{k}.{sub}": v for sub in sorted(acc[k]) if (v := _fractions(acc[k][sub])) is not None})
    return out


def accuracy_figure(t: dict[str, Any]) -> go.Figure:
    """Held-out top-1 and top-5 accuracy per head (or draft position), as grouped bars."""
    series = accuracy_series(t)
    if not series:
        return empty_figure("held-out accuracy comes when training ends" if t.get("status") == "running"
                            else "this training recorded no held-out accuracy")
    unit = head_unit(t.get("kind"))
    fig = go.Figure()
    for name, values in series.items():
        label = ACCURACY_LABELS.get(name, name)
        xs = [f"{unit} {i + 1}" for i in range(len(values))]
        fig.add_trace(go.Bar(x=xs, y=values, name=label, marker_color=ACCURACY_COLORS.get(name),
                             text=["" if v is None else f"{v:.2f}" for v in values], textposition="outside",
                             hovertemplate=f"%{{x}}<br>{label}: %{{y:.3f}}<extra></extra>"))
    fig.update_layout(template=PLOT_TEMPLATE, barmode="group", title=f"held-out accuracy per {unit}",
                      xaxis_title=unit, yaxis=dict(title="accuracy", range=[0, 1.1]), height=380,
                      margin=dict(l=20, r=20, t=50, b=20), legend=_LEGEND_BELOW)
    return fig


def training_summary(t: dict[str, Any], *, exposed: bool = False, now: datetime | None = None) -> str:
    """The headline: id, kind, target, status, progress or total time, and any error."""
    status = t.get("status", "")
    parts = [f"**Training {_code(str(t.get('id', ''))[:8])}**", str(t.get("kind", "")),
             _code(_shown(t.get("target"), exposed)), f"**{status}**"]
    step, planned = last_step(t), planned_steps(t)
    seconds = training_seconds(t, now)
    if status == "running":
        if step is None:
            parts.append("preparing data (generating responses, extracting features)")
        elif planned:
            parts.append(f"step {step} of {planned} ({100 * min(step / planned, 1):.0f}%)")
        else:
            parts.append(f"step {step}")
        if seconds is not None:
            parts.append(f"{duration_text(seconds)} so far")
    else:
        if step is not None:
            parts.append(f"{step} steps" + (f" of {planned}" if planned and step < planned else ""))
        if seconds is not None:
            parts.append(f"took {duration_text(seconds)}")
    md = " · ".join(p for p in parts if p)
    if t.get("error"):
        md += f"  \n**Error:** {_shown(' '.join(str(t['error']).split()), exposed)}"
    if status == "running":
        md += "  \nStill running: click Refresh to see its progress."
    return md


def _value_text(value: Any, exposed: bool) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif _numbers(value) is not None:
        text = " · ".join("—" if x is None else f"{x:.4g}" for x in value)
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(", ", ": "))
    else:
        text = str(value)
    text = _shown(text, exposed)
    text = text if len(text) <= 120 else text[:119] + "…"
    return text.replace("\n", " ")


def _row(items: list[str]) -> str:
    return " · ".join(items) if items else "—"


def training_details(t: dict[str, Any], *, exposed: bool = False) -> str:
    """Data sizes, timings, held-out accuracy as numbers, the output folder and the settings, as Markdown."""
    data = t.get("data") or {}
    data_items = [f"{DATA_LABELS.get(k, k)} {v:,}" if isinstance(v, int) and not isinstance(v, bool)
                  else f"{DATA_LABELS.get(k, k)} {_value_text(v, exposed)}" for k, v in data.items()]
    timings = t.get("timings") or {}
    time_items = [f"{TIMING_LABELS.get(k, k.removesuffix('_s'))} {duration_text(v)}" for k, v in timings.items()]
    lines = [f"**Data:** {_row(data_items)}", f"**Time:** {_row(time_items)}"]
    acc = t.get("accuracy") or {}
    series = accuracy_series(t)
    acc_items = [f"{ACCURACY_LABELS.get(k, k)} {accuracy_text(v, 3)}" for k, v in series.items()]
    for k, v in acc.items():  # everything else: scalars, counts, one level of nesting
        for name, x in ([(f"{k}.{sub}", x) for sub, x in v.items()] if isinstance(v, dict) else [(k, v)]):
            if name not in series:
                acc_items.append(f"{name} {_value_text(x, exposed)}")
    if acc_items:
        lines.append(f"**Held-out accuracy per {head_unit(t.get('kind'))}:** " + "; ".join(acc_items))
    out_dir = t.get("out_dir")
    lines.append("**Output folder:** " + (HIDDEN if exposed else (_code(str(out_dir)) if out_dir else "—")))
    env = t.get("env") or {}
    env_items = [f"{k} {_value_text(env[k], exposed)}" for k in ("device", "dtype", "threads", "torch") if k in env]
    if env_items:
        lines.append(f"**Environment:** {_row(env_items)}")
    config = {k: v for k, v in (t.get("config") or {}).items() if k not in ("kind", "target")}  # in the headline
    if config:
        lines.append("**Settings:** " + " ".join(
            _code(f"{_value_text(k, exposed)}={HIDDEN if exposed and k in OUT_KEYS else _value_text(v, exposed)}")
            for k, v in config.items()))
    return "  \n".join(lines)
