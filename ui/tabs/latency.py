"""Latency tab: where one run's time went, and how it compares with plain decoding.

Per-step stacked bars (draft / verify / other), tokens generated against time
(with the plain-decoding baseline of the same prompt and settings, when the
store has one), the histogram of accepted draft tokens per step and the
acceptance rate per draft position.
"""
from __future__ import annotations

import functools
from typing import Any

import gradio as gr

from .. import presenters as P
from ..common import AppContext, user_message
from .tree_viewer import refresh_runs


def latency_view(ctx: AppContext, state: dict, run_id: str | None):
    """(summary markdown, step bars, tokens vs time, acceptance histogram, acceptance by position, state)."""
    state = dict(state or {})
    state["latency_seen"] = state.get("last_run")
    if not run_id:
        msg = "No run yet: run something in the Playground first."
        return (msg, *[P.empty_figure(msg)] * 4, state)
    try:
        rec = ctx.store.get_run(run_id)
        trace = ctx.store.load_trace(run_id)
        base = ctx.store.baseline_for(rec) if rec.method != "autoregressive" else None
        base_trace = ctx.store.load_trace(base.id) if base is not None else None
    except Exception as exc:  # noqa: BLE001
        msg = user_message(exc)
        return (f"**Error:** {msg}", *[P.empty_figure(msg)] * 4, state)
    if not trace.steps:
        msg = f"Run {rec.id[:8]} has no steps ({rec.status})."
        return (msg, *[P.empty_figure(msg)] * 4, state)
    s = P.live_summary(trace)
    series = [(f"{rec.method} ({rec.id[:8]})", trace)]
    if base_trace is not None:
        series.append((f"plain decoding ({base.id[:8]})", base_trace))
    total = max(s.draft_s + s.verify_s + s.other_s, 1e-12)
    md = (f"**Run `{rec.id[:8]}`** · {rec.method} · {len(trace.steps)} steps · {s.new_tokens} tokens in "
          f"{s.wall_s:.2f} s · draft {100 * s.draft_s / total:.0f}% · verify {100 * s.verify_s / total:.0f}% · "
          f"other {100 * s.other_s / total:.0f}%")
    if base is not None:
        md += f"  \nBaseline: plain-decoding run `{base.id[:8]}`, {base.metrics.get('tokens_per_s', 0):.1f} tok/s."
    elif rec.method != "autoregressive":
        md += "  \nNo plain-decoding run of this prompt yet (the Playground's “Run baseline” makes one)."
    return (md, P.latency_figure(trace), P.tokens_time_figure(series), P.acceptance_histogram_figure(trace),
            P.acceptance_position_figure(trace), state)


def build_latency_tab(ctx: AppContext, state: gr.State) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["run"] = gr.Dropdown([], label="Run", elem_id="lat-run", scale=4, info="● marks runs from this session")
        c["refresh"] = gr.Button("Refresh", elem_id="lat-refresh", scale=0, size="sm")
    c["summary"] = gr.Markdown("", elem_id="lat-summary")
    with gr.Row():
        c["bars"] = gr.Plot(P.empty_figure("pick a run"), elem_id="lat-bars", show_label=False)
        c["time"] = gr.Plot(P.empty_figure("pick a run"), elem_id="lat-time", show_label=False)
    with gr.Row():
        c["hist"] = gr.Plot(P.empty_figure("pick a run"), elem_id="lat-hist", show_label=False)
        c["alpha"] = gr.Plot(P.empty_figure("pick a run"), elem_id="lat-alpha", show_label=False)
    c["run"].change(functools.partial(latency_view, ctx), [state, c["run"]],
                    [c["summary"], c["bars"], c["time"], c["hist"], c["alpha"], state], api_name="latency")
    refresh = functools.partial(refresh_runs, ctx, "latency_seen")
    c["refresh"].click(refresh, [state, c["run"]], c["run"], api_visibility="private")
    c["on_select"] = (refresh, [state, c["run"]], c["run"])
    return c
