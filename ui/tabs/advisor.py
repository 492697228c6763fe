"""Advisor tab: which decoding method to use for a target on this machine, measured and explained.

Pick a target, the drafters at hand (draft models; the target's trained heads are found on their own),
the prompts (the built-in suite, one of its categories, or prompts pasted one per line), a time budget
and a backend, and press Advise: the advisor (workbench.advisor) probes every applicable method on
part of the prompts, predicts each configuration's speedup, verifies the top few against plain decoding
on the other prompts and explains the answer. Progress streams into the status line; the ranking, the
predicted-against-measured table, the explanation and the ceiling plot follow. Every advice is stored:
the list below shows past ones (click a row to see it again), each with the command that reproduces it.

An advice holds the app's one decode slot (and the device lock) for its whole budget, like a run.
On a shared server (ui.exposure) only allowed models, the built-in suite or pasted prompts, and a
budget of at most EXPOSED_MAX_BUDGET_S are accepted.
"""
from __future__ import annotations

import functools
import queue
import time
from typing import Any, Iterator

import gradio as gr

from workbench.advisor import AdviceRequest, advise, candidate_methods, draft_suggestions
from workbench.advisor.budget import fmt_duration, parse_budget
from workbench.backend import BACKENDS
from workbench.bench.suites import categories_of, load_suite
from workbench.config import ConfigError

from ..common import TICK_EVERY_S, AppContext, device_thread, model_choices, status, user_message
from ..presenters import advisor as AP

SOURCES = ("built-in suite", "pasted prompts")
ALL_CATEGORIES = "(all categories)"
BUDGETS = ["1m", "2m", "5m", "10m", "20m"]
EXPOSED_MAX_BUDGET_S = 600.0
NO_ADVICE = "No advice stored yet: pick a target and press Advise."


def _categories() -> list[str]:
    return [ALL_CATEGORIES] + categories_of(load_suite("builtin"))


def advice_request(ctx: AppContext, target: str | None, drafts: list[str] | None, methods: list[str] | None,
                   source: str | None, category: str | None, pasted: str | None, budget: str | None,
                   backend: str | None, top: Any, max_new: Any) -> AdviceRequest:
    """The page's settings as a checked AdviceRequest (ConfigError / ModelError: one line for the status)."""
    target = (target or "").strip() or ctx.default_target
    drafts = [d.strip() for d in drafts or [] if d and d.strip()]
    for spec in [target] + drafts:
        ctx.policy.check_model(spec)
    prompts = None
    if source == SOURCES[1]:
        prompts = [line.strip() for line in (pasted or "").splitlines() if line.strip()]
        if len(prompts) < 2:
            raise ConfigError("paste at least two prompts, one per line (one is probed, another verifies)")
    seconds = parse_budget(budget or "5m")
    if ctx.policy.exposed and seconds > EXPOSED_MAX_BUDGET_S:
        raise ConfigError(f"on this shared server an advice may take at most {fmt_duration(EXPOSED_MAX_BUDGET_S)}")
    return AdviceRequest(target=target, drafts=drafts, methods=list(methods) if methods else None,
                         category=None if prompts or category in (None, "", ALL_CATEGORIES) else category,
                         prompts=prompts, budget_s=seconds, backend=backend or ctx.default_backend,
                         top=int(top or 3), max_new_tokens=int(max_new or 128)).check()


def view(ctx: AppContext, advice_id: str | None) -> tuple:
    """(ranking, verification, explanation, ceiling figure) of a stored advice."""
    if not advice_id:
        return (AP.advice_ranking_frame(None), AP.advice_verification_frame(None), "",
                AP.ceiling_figure(None))
    try:
        advice = ctx.store.get_advice(advice_id)
    except Exception as exc:  # noqa: BLE001
        return (AP.advice_ranking_frame(None), AP.advice_verification_frame(None),
                status("error", user_message(exc)), AP.ceiling_figure(None))
    return (AP.advice_ranking_frame(advice), AP.advice_verification_frame(advice), AP.advice_markdown(advice),
            AP.ceiling_figure(advice))


def past_advice(ctx: AppContext, current: str | None = None) -> tuple:
    """(table, ids, picker update, message): every stored advice, newest first."""
    try:
        items = ctx.store.list_advice()
    except Exception as exc:  # noqa: BLE001
        return AP.advice_list_frame([]), [], gr.update(), status("error", user_message(exc))
    ids = [a["id"] for a in items]
    value = current if current in ids else (ids[0] if ids else None)
    n = len(items)
    msg = f"{n} advice stored" if n else NO_ADVICE
    return (AP.advice_list_frame(items), ids,
            gr.update(choices=[(AP.advice_label(a), a["id"]) for a in items], value=value), msg)


def refresh(ctx: AppContext, current: str | None = None) -> tuple:
    """Opening the tab (and Refresh): the past advice and the picked one, read anew."""
    table, ids, pick, msg = past_advice(ctx, current)
    chosen = pick.get("value") if isinstance(pick, dict) else None
    return (table, ids, pick, msg, *view(ctx, chosen))


def run_advice(ctx: AppContext, target, drafts, methods, source, category, pasted, budget, backend, top,
               max_new) -> Iterator[tuple]:
    """The Advise button. Yields (status, ranking, verification, explanation, ceiling, past table, past ids,
    picker, past count) as the advice goes; the last one shows the stored advice."""
    keep = gr.update()
    try:
        req = advice_request(ctx, target, drafts, methods, source, category, pasted, budget, backend, top, max_new)
    except Exception as exc:  # noqa: BLE001
        yield (status("error", user_message(exc)),) + (keep,) * 8
        return
    yield (status("busy", f"Advising on {req.target} ({req.backend} backend, budget "
                          f"{fmt_duration(req.budget_s)})…"),) + (keep,) * 8
    events: queue.Queue = queue.Queue()
    device_thread(ctx, lambda say: advise(req, ctx.store, progress=say), events, "workbench-advise")
    t0 = time.monotonic()
    message = ""
    while True:
        try:
            kind, payload = events.get(timeout=TICK_EVERY_S)
        except queue.Empty:
            yield (status("busy", f"{message} ({time.monotonic() - t0:.0f} s of {fmt_duration(req.budget_s)})"),) \
                + (keep,) * 8
            continue
        if kind == "progress":
            message = str(payload)
            yield (status("busy", f"{message} ({time.monotonic() - t0:.0f} s)"),) + (keep,) * 8
        elif kind == "error":
            yield (status("error", f"Advice failed: {user_message(payload)}"),) + (keep,) * 8
            return
        else:
            advice = payload
            rec = (advice.get("result") or {}).get("recommended")
            table, ids, pick, count = past_advice(ctx, advice["id"])
            yield (status("ok", f"Advice {advice['id'][:8]}: recommended {rec}."), *view(ctx, advice["id"]),
                   table, ids, pick, count)
            return


def select_row(ctx: AppContext, ids: list[str], evt: gr.SelectData):
    """Clicking a past advice shows it (found by the row's id column, so sorting does not matter)."""
    short = str(evt.row_value[0]) if evt.row_value else ""
    match = [i for i in ids or [] if short and i.startswith(short)]
    if len(match) != 1:
        return (gr.update(),) * 5
    return (match[0], *view(ctx, match[0]))


def build_advisor_tab(ctx: AppContext, state: gr.State) -> dict[str, Any]:
    """The Advisor tab's components; ``on_select`` lists (fn, inputs, outputs) to run when the tab is opened."""
    c: dict[str, Any] = {}
    gr.Markdown("### Which method should I use here?\nThe advisor probes every method that applies on part of "
                "your prompts, predicts each one's speedup from what it measured and this machine's cost of a "
                "forward, verifies the top few against plain decoding on the other prompts, and explains the "
                "answer. See docs/advisor.md.", elem_id="adv-intro")
    targets, drafts = model_choices(ctx.default_target)
    with gr.Row():
        c["target"] = gr.Dropdown(targets, value=ctx.default_target, label="Target model", allow_custom_value=True,
                                  elem_id="adv-target", scale=2)
        c["drafts"] = gr.Dropdown(sorted({d for d in drafts if d != "none"} | set(draft_suggestions(
            ctx.default_target))), value=[], multiselect=True, allow_custom_value=True, label="Draft models at hand",
            info="trained heads for the target are found on their own", elem_id="adv-drafts", scale=3)
        c["methods"] = gr.Dropdown(candidate_methods(), value=[], multiselect=True, label="Methods",
                                   info="empty: every one that applies", elem_id="adv-methods", scale=3)
    with gr.Row():
        c["source"] = gr.Radio(list(SOURCES), value=SOURCES[0], label="Prompts", elem_id="adv-source", scale=2)
        c["category"] = gr.Dropdown(_categories(), value=ALL_CATEGORIES, label="Category of the built-in suite",
                                    elem_id="adv-category", scale=2)
        c["budget"] = gr.Dropdown(BUDGETS, value="5m", allow_custom_value=True, label="Budget",
                                  info="e.g. 90s, 5m", elem_id="adv-budget", scale=1)
        c["backend"] = gr.Dropdown(list(BACKENDS), value=ctx.default_backend, label="Backend",
                                   elem_id="adv-backend", scale=1)
        c["top"] = gr.Slider(1, 5, value=3, step=1, label="Verify the top", elem_id="adv-top", scale=1)
        c["max_new"] = gr.Slider(16, 128, value=128, step=16, label="Max new tokens (verification)",
                                 elem_id="adv-max-new", scale=1)
    c["pasted"] = gr.Textbox(lines=4, label="Pasted prompts (one per line)", visible=False, elem_id="adv-pasted")
    c["run"] = gr.Button("Advise", variant="primary", elem_id="adv-run")
    c["status"] = gr.Markdown("", elem_id="adv-status")
    c["ranking"] = gr.Dataframe(AP.advice_ranking_frame(None), interactive=False, wrap=True, elem_id="adv-ranking",
                                label="Every configuration, best predicted first")
    c["verification"] = gr.Dataframe(AP.advice_verification_frame(None), interactive=False, wrap=True,
                                     elem_id="adv-verification", label="Predicted against measured (verification)")
    c["explanation"] = gr.Markdown("", elem_id="adv-explanation")
    c["ceiling"] = gr.Plot(AP.ceiling_figure(None), elem_id="adv-ceiling", show_label=False)
    gr.Markdown("### Past advice", elem_id="adv-past-title")
    with gr.Row():
        c["count"] = gr.Markdown("", elem_id="adv-count")
        c["refresh"] = gr.Button("Refresh", scale=0, size="sm", elem_id="adv-refresh")
    c["past"] = gr.Dataframe(AP.advice_list_frame([]), interactive=False, wrap=True, elem_id="adv-past",
                             label="Stored advice (click a row to see it)", max_height=300)
    c["ids"] = gr.State([])
    c["pick"] = gr.Dropdown([], label="Advice", elem_id="adv-pick")

    c["source"].change(lambda s: gr.update(visible=s == SOURCES[1]), c["source"], c["pasted"],
                       api_visibility="private")
    view_out = [c["ranking"], c["verification"], c["explanation"], c["ceiling"]]
    inputs = [c[k] for k in ("target", "drafts", "methods", "source", "category", "pasted", "budget", "backend",
                             "top", "max_new")]
    c["run"].click(functools.partial(run_advice, ctx), inputs,
                   [c["status"]] + view_out + [c["past"], c["ids"], c["pick"], c["count"]], concurrency_limit=1,
                   concurrency_id="decode", api_name="advise")
    load = functools.partial(refresh, ctx)
    all_out = [c["past"], c["ids"], c["pick"], c["count"]] + view_out
    c["refresh"].click(load, c["pick"], all_out, api_name="advice")
    c["pick"].input(functools.partial(view, ctx), c["pick"], view_out, api_visibility="private")

    def pick_row(ids: list[str], evt: gr.SelectData):  # a plain function: Gradio finds `evt` by its annotation
        return select_row(ctx, ids, evt)

    c["past"].select(pick_row, c["ids"], [c["pick"]] + view_out, api_visibility="private")
    c["on_select"] = [(load, c["pick"], all_out)]
    return c
