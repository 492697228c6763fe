"""Latency tab: where one run's time went, and how it compares with plain decoding.

Per-step stacked bars (draft / verify / other), tokens generated against time
(with the plain-decoding baseline of the same prompt and settings, when the
store has one), the histogram of accepted draft tokens per step and the
acceptance rate per draft position.

Below them, what a forward costs on this machine: the cost of one forward over n
tokens per model × backend × threads (workbench.backend.profile's cached
profiles, with their spread as error bars and when each was measured; a stale,
noisy, undated or imported profile is marked), which is why a drafting method wins or
loses here; "Measure this machine" profiles the chosen target on the chosen backend
(compiling it first for the compiled backend), holding the device like a run does.
"""
from __future__ import annotations

import functools
import queue
import threading
import time
from typing import Any, Iterator

import gradio as gr

from workbench.backend import BACKENDS, check_backend, prepare
from workbench.backend import profile
from workbench.config import BASELINE
from workbench.models import load_model

from .. import presenters as P
from ..common import TICK_EVERY_S, AppContext, device_thread, model_choices, ongoing, status, user_message
from .tree_viewer import refresh_runs

SCALES = ("ms", "× one token")


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
        base = ctx.store.baseline_for(rec) if rec.method != BASELINE else None
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
    noted = P.notes_status(trace)  # e.g. cost-aware sizing chose not to draft, and why
    if noted:
        md += f"  \n{noted}"
    if base is not None:
        md += f"  \nBaseline: plain-decoding run `{base.id[:8]}`, {base.metrics.get('tokens_per_s', 0):.1f} tok/s."
    elif rec.method != BASELINE:
        md += "  \nNo plain-decoding run of this prompt yet (the Playground's “Run baseline” makes one)."
    return (md, P.latency_figure(trace), P.tokens_time_figure(series), P.acceptance_histogram_figure(trace),
            P.acceptance_position_figure(trace), state)


# ---------------------------------------------------------------- cost of a forward on this machine


def cost_view(target: str | None, scale: str | None):
    """(summary markdown, figure) of the cached cost profiles of `target`'s model (every model when it has none)."""
    try:
        rows = profile.cached_profiles()
    except Exception as exc:  # noqa: BLE001
        return status("error", user_message(exc)), P.empty_figure(user_message(exc))
    mine = P.rows_for_model(rows, target)
    note = ""
    if rows and not mine:
        note = f"  \nNothing measured for {P.model_family(target or '')} yet; showing every model measured here."
    shown_rows = mine or rows
    dates = P.profile_notes(shown_rows)  # when each was measured, its spread, stale / noisy / imported
    return (P.cost_summary(shown_rows) + note + (f"  \n{dates}" if dates else ""),
            P.cost_figure(shown_rows, relative=scale == SCALES[1]))


def _measure_thread(ctx: AppContext, target: str, backend: str, events: "queue.Queue") -> threading.Thread:
    """Load `target`, compile it when the backend needs that, and profile it, holding the device lock."""

    def job(say):
        lm = load_model(target, progress=say)
        prepare(backend, lm, profile.CONTEXT + max(profile.PROFILE_SIZES), progress=say)  # what profiling opens
        t0 = time.perf_counter()
        rows = profile.profile_table(lm, [backend], [None], refresh=True, progress=say)
        return rows, time.perf_counter() - t0

    return device_thread(ctx, job, events, "workbench-profile")


def measure_costs(ctx: AppContext, target: str | None, backend: str | None, scale: str | None) -> Iterator[tuple]:
    """The Measure button: profile target × backend on this machine. Yields (status, summary, figure)."""
    keep = gr.update()
    target = (target or "").strip() or ctx.default_target
    try:
        backend = check_backend(backend or ctx.default_backend)
        ctx.policy.check_model(target)
    except Exception as exc:  # noqa: BLE001
        yield status("error", user_message(exc)), keep, keep
        return
    yield status("busy", f"Measuring {target} on the {backend} backend..."), keep, keep
    events: queue.Queue = queue.Queue()
    _measure_thread(ctx, target, backend, events)
    waiting: tuple[str, float] | None = None
    last = time.monotonic()
    while True:
        try:
            kind, payload = events.get(timeout=TICK_EVERY_S)
        except queue.Empty:
            if waiting and time.monotonic() - last >= TICK_EVERY_S:
                last = time.monotonic()
                yield status("busy", f"{waiting[0]} {last - waiting[1]:.0f} s so far"), keep, keep
            continue
        if kind == "progress":
            waiting = (payload, time.monotonic()) if ongoing(payload) else None
            last = time.monotonic()
            yield status("busy", payload), keep, keep
        elif kind == "error":
            yield status("error", f"Measuring failed: {user_message(payload)}"), keep, keep
            return
        else:
            rows, seconds = payload
            summary, fig = cost_view(target, scale)
            row = rows[0] if rows else {}
            yield (status("ok", f"Measured {P.profile_label(row) if row else target} in {seconds:.0f} s "
                                f"on {row.get('cpu', 'this machine')}."), summary, fig)
            return


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
    gr.Markdown("### Cost of a forward on this machine\n"
                "Drafting pays off when verifying n tokens in one forward costs little more than one token. "
                "Measured per model, precision, backend and thread count; cached on this machine.",
                elem_id="cost-intro")
    targets, _ = model_choices(ctx.default_target)
    with gr.Row():
        c["cost_target"] = gr.Dropdown(targets, value=ctx.default_target, label="Target model",
                                       allow_custom_value=True, elem_id="cost-target", scale=3)
        c["cost_backend"] = gr.Dropdown(list(BACKENDS), value=ctx.default_backend, label="Backend",
                                        elem_id="cost-backend", scale=2)
        c["cost_scale"] = gr.Radio(list(SCALES), value=SCALES[0], label="y axis", elem_id="cost-scale", scale=2)
        c["measure"] = gr.Button("Measure this machine", elem_id="cost-measure", scale=1, min_width=200)
    c["cost_status"] = gr.Markdown("", elem_id="cost-status")
    c["cost_summary"] = gr.Markdown("", elem_id="cost-summary")
    c["cost_plot"] = gr.Plot(P.empty_figure("open this tab to see the measured costs"), elem_id="cost-plot",
                             show_label=False)

    c["run"].change(functools.partial(latency_view, ctx), [state, c["run"]],
                    [c["summary"], c["bars"], c["time"], c["hist"], c["alpha"], state], api_name="latency")
    refresh = functools.partial(refresh_runs, ctx, "latency_seen")
    c["refresh"].click(refresh, [state, c["run"]], c["run"], api_visibility="private")
    view_in = [c["cost_target"], c["cost_scale"]]
    view_out = [c["cost_summary"], c["cost_plot"]]
    for comp in (c["cost_target"], c["cost_scale"]):
        comp.change(cost_view, view_in, view_out, api_visibility="private")
    c["measure"].click(functools.partial(measure_costs, ctx), [c["cost_target"], c["cost_backend"], c["cost_scale"]],
                       [c["cost_status"]] + view_out, concurrency_limit=1, concurrency_id="decode",
                       api_name="measure")
    c["on_select"] = [(refresh, [state, c["run"]], c["run"]), (cost_view, view_in, view_out)]
    return c
