"""Train tab: the store's trainings of drafter heads (``workbench train``), and one of them in detail.

The table lists every training (newest first: kind, target, status, data
sizes, steps, held-out top-1 per head, time); picking one (a row, or the
picker) shows its loss curves, its held-out top-1/top-5 accuracy per head or
draft position, its data sizes, timings, settings and output folder.

Training is not started from here: it takes minutes to tens of minutes of CPU,
which would hold the app's one decode slot. The trainer records itself in the
store as it goes, so Refresh shows a running training's progress (and a
training whose process died as ``interrupted``). On a shared server
(ui.exposure) output folders and local paths are not shown.
"""
from __future__ import annotations

import functools
from typing import Any

import gradio as gr

from .. import presenters as P
from ..common import AppContext, status, user_message

HELP = """### Train drafter heads
EAGLE, Medusa and Hydra heads (or a distilled draft model) are trained for a target by self-distillation: the target \
writes responses to a set of prompts, and the heads learn to predict its next tokens from its own hidden states. \
Train from a terminal:

```
workbench train --kind eagle --target smollm2-135m
```

(`--kind medusa`, `--kind hydra` or `--kind draft` for the others; `workbench train --help` lists the settings.) \
The app does not offer training: it takes minutes to tens of minutes of CPU. Every training records itself in this \
store as it goes; click **Refresh** to follow one that is running."""

NO_TRAININGS = "No trainings stored yet: run `workbench train ...` in a terminal, then Refresh."


def trainings_table(ctx: AppContext, current: str | None = None):
    """(table, ids, picker update, message): every stored training; the picker keeps `current` when it is there."""
    exposed = ctx.policy.exposed
    try:
        trainings = ctx.store.list_trainings()
    except Exception as exc:  # noqa: BLE001
        return P.trainings_frame([]), [], gr.update(), status("error", user_message(exc))
    ids = [t["id"] for t in trainings]
    choices = [(P.training_label(t, exposed), t["id"]) for t in trainings]
    value = current if current in ids else (ids[0] if ids else None)
    n = len(trainings)
    running = sum(t["status"] == "running" for t in trainings)
    msg = (f"{n} training{'s' * (n != 1)}" + (f", {running} running" if running else "")) if n else NO_TRAININGS
    return P.trainings_frame(trainings, exposed=exposed), ids, gr.update(choices=choices, value=value), msg


def training_view(ctx: AppContext, training_id: str | None):
    """(summary markdown, loss curves, accuracy bars, details markdown) of one training."""
    if not training_id:
        return "Pick a training.", P.empty_figure("no training picked"), P.empty_figure("no training picked"), ""
    try:
        t = ctx.store.get_training(str(training_id))
    except Exception as exc:  # noqa: BLE001
        msg = user_message(exc)
        return status("error", msg), P.empty_figure(msg), P.empty_figure(msg), ""
    exposed = ctx.policy.exposed
    return (P.training_summary(t, exposed=exposed), P.loss_figure(t), P.accuracy_figure(t),
            P.training_details(t, exposed=exposed))


def refresh(ctx: AppContext, current: str | None = None):
    """The Refresh button (and opening the tab): the table and the picked training, both read anew."""
    table, ids, pick, msg = trainings_table(ctx, current)
    chosen = pick.get("value") if isinstance(pick, dict) else None
    return (table, ids, pick, msg, *training_view(ctx, chosen))


def select_row(ctx: AppContext, ids: list[str], evt: gr.SelectData):
    """Clicking a table row picks that training (found by the row's id column, so sorting does not matter)."""
    short = str(evt.row_value[0]) if evt.row_value else ""
    match = [i for i in ids or [] if short and i.startswith(short)]
    if len(match) != 1:
        return (gr.update(), *[gr.update()] * 4)
    return (match[0], *training_view(ctx, match[0]))


def build_train_tab(ctx: AppContext, state: gr.State) -> dict[str, Any]:
    """The Train tab's components; ``on_select`` lists (fn, inputs, outputs) to run when the tab is opened."""
    c: dict[str, Any] = {}
    c["help"] = gr.Markdown(HELP, elem_id="train-help")
    with gr.Row():
        c["count"] = gr.Markdown("", elem_id="train-count")
        c["refresh"] = gr.Button("Refresh", scale=0, elem_id="train-refresh")
    c["table"] = gr.Dataframe(P.trainings_frame([]), interactive=False, elem_id="train-table", wrap=True,
                              max_height=320, label="Trainings (click a row to see it)")
    c["ids"] = gr.State([])
    c["pick"] = gr.Dropdown([], label="Training", elem_id="train-pick")
    c["summary"] = gr.Markdown("", elem_id="train-summary")
    with gr.Row():
        c["loss"] = gr.Plot(P.empty_figure("pick a training"), elem_id="train-loss", show_label=False)
        c["acc"] = gr.Plot(P.empty_figure("pick a training"), elem_id="train-acc", show_label=False)
    c["details"] = gr.Markdown("", elem_id="train-details")

    view_out = [c["summary"], c["loss"], c["acc"], c["details"]]
    all_out = [c["table"], c["ids"], c["pick"], c["count"]] + view_out
    load = functools.partial(refresh, ctx)
    c["refresh"].click(load, c["pick"], all_out, api_name="trainings")
    c["pick"].input(functools.partial(training_view, ctx), c["pick"], view_out, api_name="training")

    def pick_row(ids: list[str], evt: gr.SelectData):  # a plain function: Gradio finds `evt` by its annotation
        return select_row(ctx, ids, evt)

    c["table"].select(pick_row, c["ids"], [c["pick"]] + view_out, api_visibility="private")
    c["on_select"] = [(load, c["pick"], all_out)]
    return c
