"""History & compare tab: every stored run, filtered and sorted; compare, delete, export; benchmarks.

The table lists the runs that match the search box and the method/status
filters, each with its settings (the parameters it changed from their
defaults, length, chat), sampling, backend and speedup against its own
plain-decoding baseline (click a column header to sort; click a row to add it
to the selection). Comparing two or more runs shows their metrics side by side
(every row; each speedup against that run's baseline, whatever the selection
order), tokens generated against time overlaid, and a token-level diff of each
output against the first selected run, aligned over token ids. Export CSV
writes the selected runs (none selected: the listed ones) with their backend.
Benchmarks list the stored sweeps and show `workbench.bench.benchmark_table` for one.

Every run is marked lossless or LOSSY (and a filter keeps either), with its quality against plain
decoding (agreement, ROUGE-L, NLL gap; workbench.quality). *Speed vs quality* draws the selected runs
(none selected: the listed ones; tokens/s) or a benchmark's arms (speedup, a --sweep's arms as a curve)
against a chosen quality measure, lossless ones on the reference line (ui.presenters.quality).
"""
from __future__ import annotations

import functools
import html
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from store import RUN_STATUSES
from workbench import metrics as M
from workbench.methods import list_methods

from .. import presenters as P
from ..common import AppContext, run_label, status, texts_for, user_message

MAX_ROWS = 500
COMPARE_MAX_HEIGHT = 2000  # px: tall enough for every row of the side-by-side table (Gradio's default cuts at 500)


# The lossless/lossy filter's choices -> list_runs' `lossless` argument.
KINDS = {"all runs": None, "lossless only": True, "lossy only": False}


def _filters(search: str | None, methods: list[str] | None, statuses: list[str] | None,
             kind: str | None = None) -> dict[str, Any]:
    return {"search": (search or "").strip() or None, "method": list(methods) if methods else None,
            "status": list(statuses) if statuses else None, "lossless": KINDS.get(kind or "all runs")}


def param_defaults() -> dict[str, dict[str, Any]]:
    """method -> parameter -> default, so a run's settings name only what it changed."""
    return {m.name: {p.name: p.default for p in m.params} for m in list_methods()}


def history_table(ctx: AppContext, search: str | None, methods: list[str] | None, statuses: list[str] | None,
                  selected: list[str] | None = None, kind: str | None = None):
    """(table, row ids, selection dropdown update, message) for the current filters (kind: a KINDS key): each
    run with its settings, sampling, backend, speedup against its plain-decoding baseline (store.baselines_for),
    lossless or LOSSY mark and quality."""
    try:
        recs = ctx.store.list_runs(limit=MAX_ROWS, **_filters(search, methods, statuses, kind))
        baselines = ctx.store.baselines_for(recs)
    except Exception as exc:  # noqa: BLE001
        return P.runs_frame([]), [], gr.update(), status("error", user_message(exc))
    ids = [r.id for r in recs]
    choices = [(run_label(r), r.id) for r in recs]
    keep = [s for s in (selected or []) if s in ids]
    msg = f"{len(recs)} run{'s' * (len(recs) != 1)}" + (f" (showing the newest {MAX_ROWS})" if len(recs) == MAX_ROWS
                                                         else "")
    return P.runs_frame(recs, defaults=param_defaults(), baselines=baselines), ids, \
        gr.update(choices=choices, value=keep), msg


def select_row(ids: list[str], selected: list[str] | None, evt: gr.SelectData):
    """Clicking a table row toggles that run in the selection (found by the row's id column,
    so it works on a table the user has sorted)."""
    short = str(evt.row_value[0]) if evt.row_value else None
    if short is None:
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        short = ids[int(row)][:8] if 0 <= int(row) < len(ids) else None
    return toggle_selection(ids, selected, short)


def toggle_selection(ids: list[str], selected: list[str] | None, short_id: str | None) -> list[str]:
    """Add the run whose id starts with short_id to the selection, or remove it if it is there."""
    selected = list(selected or [])
    match = [r for r in ids if short_id and r.startswith(short_id)]
    if len(match) == 1:
        rid = match[0]
        selected = [s for s in selected if s != rid] if rid in selected else selected + [rid]
    return selected


def compare_runs(ctx: AppContext, selected: list[str] | None):
    """(message, metrics side by side, tokens-vs-time overlay, token diff html) for the selected runs."""
    selected = list(dict.fromkeys(selected or []))
    if len(selected) < 2:
        msg = "Select two or more runs to compare (click rows in the table, or pick ids below it)."
        return status("info", msg), gr.update(visible=False), P.empty_figure(msg), ""
    try:
        recs = [ctx.store.get_run(r) for r in selected]
        traces = [ctx.store.load_trace(r.id) for r in recs]
        baselines = ctx.store.baselines_for(recs)
    except Exception as exc:  # noqa: BLE001
        msg = user_message(exc)
        return status("error", msg), gr.update(visible=False), P.empty_figure(msg), ""
    fig = P.tokens_time_figure([(f"{r.id[:8]} {r.method}", t) for r, t in zip(recs, traces)])
    ids = [list(r.output_ids or []) for r in recs]
    texts = [texts_for(r.target, i) for r, i in zip(recs, ids)]
    diffs = []
    for rec, txt, tok in zip(recs[1:], texts[1:], ids[1:]):
        same_vocab = rec.target == recs[0].target  # token ids compare only within one tokenizer
        diffs.append(P.token_diff_html(texts[0], txt, f"{recs[0].id[:8]} ({recs[0].method})",
                                       f"{rec.id[:8]} ({rec.method})", a_ids=ids[0] if same_vocab else None,
                                       b_ids=tok if same_vocab else None))
    targets = {r.target for r in recs}
    note = "" if len(targets) == 1 else " (different targets: the token diff aligns their texts)"
    acceptances = {r.id: M.acceptance(t.steps) for r, t in zip(recs, traces)}  # from the steps, as the cards
    frame = P.compare_frame(recs, baselines, defaults=param_defaults(), acceptances=acceptances)
    return (status("ok", f"Comparing {len(recs)} runs{note}; each speedup is against that run's own "
                         "plain-decoding baseline."),
            gr.update(value=frame, visible=True), fig,
            '<div id="wb-diffs">' + '<hr style="margin:6px 0">'.join(diffs) + "</div>")


def ask_delete(selected: list[str] | None):
    """First click: ask to confirm. Returns (message, confirm button update)."""
    n = len(selected or [])
    if not n:
        return status("info", "Select runs to delete first."), gr.update(visible=False)
    return status("warn", f"Delete {n} run{'s' * (n != 1)} for good? Click “Confirm delete”."), \
        gr.update(visible=True)


def delete_selected(ctx: AppContext, selected: list[str] | None, search, methods, statuses):
    """Delete the selected runs, then redraw the table. Returns (message, confirm, table, ids, selection)."""
    if not ctx.policy.can_delete:  # a shared server: one user must not erase everyone's runs
        return (status("error", "Deleting runs is turned off on this shared server."), gr.update(visible=False),
                gr.update(), gr.update(), gr.update())
    try:
        n = ctx.store.delete_runs(selected or [])
    except Exception as exc:  # noqa: BLE001
        return status("error", user_message(exc)), gr.update(visible=False), gr.update(), gr.update(), gr.update()
    table, ids, sel, _ = history_table(ctx, search, methods, statuses, [])
    return status("ok", f"Deleted {n} run{'s' * (n != 1)}."), gr.update(visible=False), table, ids, sel


def export_csv(ctx: AppContext, search, methods, statuses, selected: list[str] | None = None,
               kind: str | None = None):
    """Write the selected runs (none selected: the filtered ones, at most MAX_ROWS as the table) to a CSV file,
    each with its backend and machine; returns (file path or None, message)."""
    selected = list(dict.fromkeys(selected or []))
    try:
        out = Path(tempfile.mkdtemp(prefix="workbench-export-")) / f"runs-{time.strftime('%Y%m%d-%H%M%S')}.csv"
        which = dict(ids=selected) if selected else dict(limit=MAX_ROWS, **_filters(search, methods, statuses, kind))
        n = ctx.store.export_csv(out, **which)
    except Exception as exc:  # noqa: BLE001
        return gr.update(value=None, visible=False), status("error", user_message(exc))
    what = "selected " if selected else "listed "
    return gr.update(value=str(out), visible=True), status("ok", f"Exported the {n} {what}run{'s' * (n != 1)} "
                                                                 "to CSV (with each run's backend).")


def _when(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.astimezone().strftime("%Y-%m-%d %H:%M") if hasattr(value, "astimezone") else str(value or "")


def list_benchmarks(ctx: AppContext):
    try:
        benches = ctx.store.list_benchmarks()
    except Exception as exc:  # noqa: BLE001
        return gr.update(choices=[], value=None), status("error", user_message(exc))
    choices = []
    for b in benches:
        when = _when(b.get("created_at"))
        choices.append((f"{b['id'][:8]} · {b.get('suite', '')} · {b.get('status', '')} · {when} · "
                        f"{b.get('n_runs', 0)} runs", b["id"]))
    msg = f"{len(choices)} benchmark{'s' * (len(choices) != 1)} stored." if choices else \
        "No benchmarks stored yet (run `workbench bench ...`)."
    return gr.update(choices=choices, value=choices[0][1] if choices else None), msg


def show_benchmark(ctx: AppContext, bench_id: str | None):
    """(message, table) for one benchmark: workbench.bench.benchmark_table (methods × categories)."""
    if not bench_id:
        return "Pick a benchmark.", pd.DataFrame()
    try:  # here: an installation without the benchmark code still serves the app; the page says so
        from workbench.bench import benchmark_table
    except ImportError as exc:
        return status("error", f"Benchmark tables are not available in this installation ({exc})."), \
            pd.DataFrame()
    try:
        table = benchmark_table(ctx.store, bench_id)
    except Exception as exc:  # noqa: BLE001
        return status("error", user_message(exc)), pd.DataFrame()
    if isinstance(table.index, pd.MultiIndex) or table.index.name is not None:
        table = table.reset_index()
    table = table.round(3)
    return (f"Benchmark `{html.escape(bench_id[:8])}`: speedup against plain decoding, per method and category "
            f"({len(table)} rows)."), table


def runs_pareto(ctx: AppContext, search, methods, statuses, kind: str | None, measure: str,
                selected: list[str] | None = None):
    """(message, figure): the selected runs' (none selected: the listed runs') tokens/s against a quality
    measure (ui.presenters.quality)."""
    selected = list(dict.fromkeys(selected or []))
    try:
        P.check_measure(measure)
        which = dict(ids=selected) if selected else dict(limit=MAX_ROWS, **_filters(search, methods, statuses, kind))
        recs = ctx.store.list_runs(**which)
    except Exception as exc:  # noqa: BLE001
        msg = user_message(exc)
        return status("error", msg), P.empty_figure(msg)
    points = P.run_points(recs, measure)
    measured = sum(not p["lossless"] and p["quality"] == p["quality"] for p in points)
    return (f"{len(points)} finished {'selected' if selected else 'listed'} runs; "
            f"{sum(p['lossless'] for p in points)} lossless (on the reference line), "
            f"{measured} lossy with a measured {P.MEASURES[measure]}."), \
        P.pareto_figure(points, measure, speed_label="tokens/s")


def bench_pareto(ctx: AppContext, bench_id: str | None, measure: str):
    """A benchmark's arms: speedup against a quality measure, each --sweep's arms joined as a curve."""
    if not bench_id:
        return P.empty_figure("pick a benchmark")
    try:  # here: as show_benchmark
        from workbench.bench import benchmark_rows
    except ImportError as exc:
        return P.empty_figure(f"benchmark reports are not available in this installation ({exc})")
    try:
        P.check_measure(measure)
        rows, names = benchmark_rows(ctx.store, bench_id)
    except Exception as exc:  # noqa: BLE001
        return P.empty_figure(user_message(exc))
    return P.pareto_figure(P.bench_points(rows, measure, names=names), measure,
                           speed_label="speedup over plain decoding", title=f"Benchmark {bench_id[:8]}")


def run_summary(ctx: AppContext, run_id: str) -> dict[str, Any]:
    """A stored run as plain data: status, method, models, output and every metric (the `run_metrics` API)."""
    try:
        rec = ctx.store.get_run(str(run_id or ""))
    except Exception as exc:  # noqa: BLE001 - one line for the API caller, never a trace
        raise gr.Error(user_message(exc)) from None
    return {"run_id": rec.id, "status": rec.status, "error": rec.error, "method": rec.method, "target": rec.target,
            "draft": rec.draft, "params": rec.typed_params, "output_text": rec.output_text,
            "metrics": {k: (None if v != v else v) for k, v in rec.metrics.items()},
            "lossless": rec.lossless, "lossy": list(rec.lossy), "quality": rec.quality}


def build_history_tab(ctx: AppContext, state: gr.State) -> dict[str, Any]:
    c: dict[str, Any] = {}
    method_names = [m.name for m in list_methods()]
    with gr.Row():
        c["search"] = gr.Textbox(label="Search", placeholder="prompt, model, method or id prefix", scale=3,
                                 elem_id="hist-search")
        c["methods"] = gr.Dropdown(method_names, multiselect=True, label="Method", scale=2, elem_id="hist-methods",
                                   allow_custom_value=True)
        c["statuses"] = gr.Dropdown(list(RUN_STATUSES), multiselect=True, label="Status", scale=1,
                                    elem_id="hist-statuses")
        c["kind"] = gr.Dropdown(list(KINDS), value="all runs", label="Lossless / lossy", scale=1,
                                elem_id="hist-kind")
        c["refresh"] = gr.Button("Refresh", scale=0, elem_id="hist-refresh")
    c["count"] = gr.Markdown("", elem_id="hist-count")
    c["table"] = gr.Dataframe(P.runs_frame([]), interactive=False, elem_id="hist-table", wrap=True, max_height=420,
                              label="Runs (click a header to sort, a row to select it)")
    c["ids"] = gr.State([])
    c["selected"] = gr.Dropdown([], multiselect=True, label="Selected runs", elem_id="hist-select")
    with gr.Row():
        c["compare"] = gr.Button("Compare", variant="primary", elem_id="hist-compare")
        c["delete"] = gr.Button("Delete selected", variant="stop", elem_id="hist-delete")
        c["confirm"] = gr.Button("Confirm delete", variant="stop", visible=False, elem_id="hist-confirm")
        c["export"] = gr.Button("Export CSV", elem_id="hist-export")
    c["message"] = gr.Markdown("", elem_id="hist-message")
    c["file"] = gr.File(label="CSV export", elem_id="hist-csv", interactive=False, visible=False, height=80)
    c["metrics"] = gr.Dataframe(pd.DataFrame(), interactive=False, label="Metrics side by side",
                                elem_id="hist-metrics", visible=False, max_height=COMPARE_MAX_HEIGHT, wrap=True)
    c["time"] = gr.Plot(P.empty_figure("select runs and click Compare"), elem_id="hist-time", show_label=False)
    c["diff"] = gr.HTML("", elem_id="hist-diff")
    with gr.Accordion("Speed vs quality", open=False, elem_id="hist-pareto-acc"):
        with gr.Row():
            c["measure"] = gr.Dropdown([(label, key) for key, label in P.MEASURES.items()], value="agreement",
                                       label="Quality measure", scale=3, elem_id="hist-measure")
            c["pareto_draw"] = gr.Button("Draw the selected runs (none: the listed ones)", scale=0,
                                         elem_id="hist-pareto-draw")
        c["pareto_msg"] = gr.Markdown("", elem_id="hist-pareto-msg")
        c["pareto"] = gr.Plot(P.empty_figure("click Draw"), elem_id="hist-pareto", show_label=False)
    with gr.Accordion("Benchmarks", open=False, elem_id="hist-bench-acc"):
        with gr.Row():
            c["bench"] = gr.Dropdown([], label="Benchmark", scale=4, elem_id="hist-bench")
            c["bench_refresh"] = gr.Button("Refresh", scale=0, elem_id="hist-bench-refresh")
        c["bench_msg"] = gr.Markdown("", elem_id="hist-bench-msg")
        c["bench_table"] = gr.Dataframe(pd.DataFrame(), interactive=False, elem_id="hist-bench-table")
        c["bench_pareto"] = gr.Plot(P.empty_figure("pick a benchmark"), elem_id="hist-bench-pareto",
                                    show_label=False)

    filters = [c["search"], c["methods"], c["statuses"]]
    table_out = [c["table"], c["ids"], c["selected"], c["count"]]
    load = functools.partial(history_table, ctx)
    listed = filters + [c["selected"], c["kind"]]
    c["refresh"].click(load, listed, table_out, api_name="history")
    c["search"].submit(load, listed, table_out, api_visibility="private")
    for f in (c["methods"], c["statuses"], c["kind"]):
        f.change(load, listed, table_out, api_visibility="private")
    c["table"].select(select_row, [c["ids"], c["selected"]], c["selected"], api_visibility="private")
    c["compare"].click(functools.partial(compare_runs, ctx), c["selected"],
                       [c["message"], c["metrics"], c["time"], c["diff"]], api_name="compare")
    c["delete"].click(ask_delete, c["selected"], [c["message"], c["confirm"]], api_visibility="private")
    c["confirm"].click(functools.partial(delete_selected, ctx), [c["selected"]] + filters,
                       [c["message"], c["confirm"], c["table"], c["ids"], c["selected"]], api_name="delete")
    c["export"].click(functools.partial(export_csv, ctx), listed, [c["file"], c["message"]], api_name="export")
    c["pareto_draw"].click(functools.partial(runs_pareto, ctx), filters + [c["kind"], c["measure"], c["selected"]],
                           [c["pareto_msg"], c["pareto"]], api_name="pareto")
    bench_list = functools.partial(list_benchmarks, ctx)
    c["bench_refresh"].click(bench_list, None, [c["bench"], c["bench_msg"]], api_name="benchmarks")
    c["bench"].change(functools.partial(show_benchmark, ctx), c["bench"], [c["bench_msg"], c["bench_table"]],
                      api_name="benchmark")
    for trigger in (c["bench"], c["measure"]):
        trigger.change(functools.partial(bench_pareto, ctx), [c["bench"], c["measure"]], c["bench_pareto"],
                       api_visibility="private")

    def run_metrics(run_id: str) -> dict:
        """Status, method, models, output text and metrics of a stored run (id or unique prefix)."""
        return run_summary(ctx, run_id)

    gr.api(run_metrics, api_name="run_metrics")
    c["on_select"] = [(load, listed, table_out), (bench_list, None, [c["bench"], c["bench_msg"]])]
    return c
