"""What a forward costs on this machine: seconds of one forward over n new tokens, per model × backend × threads.

The rows are workbench.backend.profile's cost profiles (``cached_profiles()``),
plain dicts ``{model, device, cpu, backend, threads, seconds: {n: s}}`` and, from
the profile cache, ``spread: {n: IQR / median}``, ``measured_at``, ``stale``,
``noisy``, ``legacy``, ``imported`` and ``name`` (the machine). Drafting
wins when verifying n tokens in one forward costs little more than one token:
on a GPU the curve is flat for dozens of tokens, on a small CPU it climbs after a
few, unless the backend pre-packs its weights (compiled). ``cost_figure`` draws
the curves (each point with its spread as an error bar), ``cost_summary`` says in
one line which precision and backend is fastest for 1 and for 8 tokens, and
``profile_notes`` when each profile was measured, how far its repeats spread and
whether it is stale, noisy, undated or another machine's.
"""
from __future__ import annotations

import html
from typing import Any, Sequence

import plotly.graph_objects as go

from .base import PLOT_TEMPLATE

SUMMARY_SIZES = (1, 8)  # one token (plain decoding, drafting a chain) and a typical verification
BACKEND_DASH = {"eager": "solid", "compiled": "dash"}


def model_family(spec: str) -> str:
    """The model a spec names, without its precision and options ('smollm2-135m:bf16' -> 'smollm2-135m')."""
    return str(spec or "").split(":")[0].split("|")[0].strip()


def rows_for_model(rows: Sequence[dict[str, Any]], spec: str | None) -> list[dict[str, Any]]:
    """The profiles of `spec`'s model in every precision, backend and thread count."""
    family = model_family(spec or "")
    return [r for r in rows if model_family(r.get("model", "")) == family]


def cost_at(row: dict[str, Any], n: int) -> float | None:
    """Seconds of one forward over n tokens: measured, or linearly between two measured sizes; None outside."""
    prof = {int(k): float(v) for k, v in (row.get("seconds") or {}).items()}
    if n in prof:
        return prof[n]
    below = [k for k in prof if k < n]
    above = [k for k in prof if k > n]
    if not below or not above:
        return None
    a, b = max(below), min(above)
    return prof[a] + (prof[b] - prof[a]) * (n - a) / (b - a)


def profile_label(row: dict[str, Any], with_device: bool = False) -> str:
    """'smollm2-135m:bf16 · compiled (static 2,4,8,16) · 2 threads' (plus the device when several are shown)."""
    t = int(row.get("threads") or 0)
    backend = str(row.get("backend", "?"))
    if row.get("static"):  # the compiled backend's static verification sizes shape its curve
        backend += f" (static {row['static']})"
    parts = [str(row.get("model", "?")), backend,
             f"{t} thread{'s' * (t != 1)}" if t else "threads ?"]
    if with_device:
        parts.append(str(row.get("device", "")))
    return " · ".join(parts + profile_flags(row))


def profile_flags(row: dict[str, Any]) -> list[str]:
    """What to keep in mind about a profile: another machine's, stale, noisy, or undated (an older version's)."""
    flags = [f"from {row.get('name')}"] if row.get("imported") else []
    if row.get("stale"):
        flags.append("stale")
    if row.get("noisy"):
        flags.append("noisy")
    if row.get("legacy") and not row.get("imported"):
        flags.append("undated")
    return flags


def measured_when(row: dict[str, Any]) -> str:
    """'2026-12-07 05:43 UTC' from the row's measured_at ('' when it has none)."""
    when = str(row.get("measured_at") or "")
    return f"{when[:10]} {when[11:16]} UTC" if len(when) >= 16 else when


def profile_notes(rows: Sequence[dict[str, Any]]) -> str:
    """One markdown line per profile that has a date or a flag: when it was measured, how far its repeats
    spread (the largest and the typical interquartile range over the median, per size) and what to keep in mind
    (stale: measured again by the next cost-aware run; noisy; undated; another machine's, never used here)."""
    lines = []
    for r in rows:
        flags = profile_flags(r)
        when = measured_when(r)
        if not when and not flags:
            continue
        spread = sorted((r.get("spread") or {}).values())
        parts = [f"measured {when}" if when else "undated"]
        if spread:
            parts.append(f"spread up to {100 * spread[-1]:.0f}% (typically {100 * spread[len(spread) // 2]:.0f}%)")
        elif not r.get("imported"):
            parts.append("spread unknown")
        if r.get("stale"):
            parts.append(f"⚠ stale ({r['stale']}): the next cost-aware run measures it again")
        if r.get("noisy"):
            parts.append("⚠ noisy: measured while the machine was busy")
        if r.get("legacy") and not r.get("imported"):
            parts.append("measured by an older version: measured again before a cost-aware method uses it")
        if r.get("imported"):
            parts.append(f"imported from {r.get('name')} ({r.get('cpu')}), never used for this machine's decisions")
        lines.append(f"`{profile_label({**r, 'imported': False, 'stale': None, 'noisy': False, 'legacy': False})}`: "
                     + "; ".join(parts))
    return "  \n".join(lines)


def _processors(rows: Sequence[dict[str, Any]]) -> str:
    return "; ".join(dict.fromkeys(str(r.get("cpu") or "unknown processor") for r in rows))


def cost_figure(rows: Sequence[dict[str, Any]], *, relative: bool = False) -> go.Figure:
    """One line per model × backend × threads: x = tokens in one forward, y = ms (relative: × one token)."""
    rows = [r for r in rows if r.get("seconds")]
    fig = go.Figure()
    if not rows:
        fig.add_annotation(text="no costs measured on this machine yet", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper", font=dict(size=14, color="#888"))
        fig.update_layout(template=PLOT_TEMPLATE, height=240, xaxis=dict(visible=False), yaxis=dict(visible=False),
                          margin=dict(l=20, r=20, t=20, b=20))
        return fig
    several_devices = len({r.get("device") for r in rows}) > 1
    rows = sorted(rows, key=lambda r: (str(r.get("model")), str(r.get("backend")), int(r.get("threads") or 0)))
    sizes_seen: set[int] = set()
    for r in rows:
        prof = sorted((int(n), float(s)) for n, s in r["seconds"].items())
        one = cost_at(r, 1)
        xs = [n for n, _ in prof]
        sizes_seen.update(xs)
        ms = [1000 * s for _, s in prof]
        ratio = [s / one if one else float("nan") for _, s in prof]
        label = profile_label(r, several_devices)
        # the spread (IQR / median of the timed rounds) as a bar of half of it on each side of the median
        spread = {int(n): float(v) for n, v in (r.get("spread") or {}).items()}
        half = [spread.get(n, 0.0) / 2 for n in xs]
        y = ratio if relative else ms
        when = measured_when(r)
        fig.add_trace(go.Scatter(
            x=xs, y=y, mode="lines+markers", name=label,
            line=dict(dash=BACKEND_DASH.get(str(r.get("backend")), "dot")),
            error_y=dict(type="data", array=[v * h for v, h in zip(y, half)], visible=bool(spread), thickness=1),
            customdata=list(zip(ms, ratio, [100 * spread[n] if n in spread else float("nan") for n in xs])),
            hovertemplate="%{x} tokens: %{customdata[0]:.2f} ms, %{customdata[1]:.2f}× one token"
                          + (", spread %{customdata[2]:.0f}%" if spread else "")
                          + (f"<br>measured {html.escape(when)}" if when else "")
                          + "<extra>" + html.escape(label) + "</extra>"))
    ticks = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if min(sizes_seen) <= n <= max(sizes_seen)]
    days = sorted({measured_when(r)[:10] for r in rows if r.get("measured_at")})
    dated = f" · measured {days[0]}" + (f" to {days[-1]}" if len(days) > 1 else "") if days else ""
    fig.update_layout(
        template=PLOT_TEMPLATE, height=380, margin=dict(l=20, r=20, t=60, b=20),
        title=dict(text=f"cost of one forward over n tokens · {html.escape(_processors(rows))}{dated}",
                   font=dict(size=14)),
        xaxis=dict(title="tokens in one forward (n)", type="log", tickvals=ticks, ticktext=[str(t) for t in ticks]),
        # ms on a log axis: models of very different sizes (and a noisy point) stay readable together
        yaxis=dict(title="× the cost of one token", rangemode="tozero") if relative else
        dict(title="ms per forward (log scale)", type="log"),
        legend=dict(orientation="h", y=-0.2))
    return fig


def fastest(rows: Sequence[dict[str, Any]], n: int) -> tuple[dict[str, Any], float] | None:
    """The profile with the cheapest forward over n tokens, and its seconds (None when none covers n)."""
    costs = [(r, c) for r in rows if (c := cost_at(r, n)) is not None]
    return min(costs, key=lambda rc: rc[1]) if costs else None


def cost_summary(rows: Sequence[dict[str, Any]]) -> str:
    """One markdown line per model: the precision/backend/threads fastest for 1 token and for 8 tokens."""
    if not rows:
        return ("No costs measured on this machine yet: pick a target and a backend and click "
                "“Measure this machine” (or run `workbench profile`).")
    families: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        families.setdefault(model_family(r.get("model", "")), []).append(r)
    lines = []
    for family, group in families.items():
        parts = []
        for n in SUMMARY_SIZES:
            best = fastest(group, n)
            if best is None:
                continue
            r, s = best
            one = cost_at(r, 1)
            rel = f", {s / one:.2f}× one token" if n > 1 and one else ""
            parts.append(f"for {n} token{'s' * (n != 1)}: `{profile_label(r)}` ({1000 * s:.2f} ms{rel})")
        if parts:
            lines.append(f"**{family}** fastest " + "; ".join(parts) + f" — {len(group)} profile"
                         + "s" * (len(group) != 1) + " measured")
    return "  \n".join(lines)
