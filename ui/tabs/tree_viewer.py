"""Draft tree viewer tab: one run, one step at a time.

A run picker (defaulting to this session's latest run) and a step slider; the
step's draft tree is drawn with plotly (accepted path highlighted, rejected
branches dimmed, the target's bonus/correction token as an extra node). Steps
whose draft branches also show the tree attention mask (computed by
workbench.draft, the same buffer the engine feeds the target).
"""
from __future__ import annotations

import functools
from typing import Any

import gradio as gr

from workbench.draft import Draft
from workbench.trace import Step, Trace

from .. import presenters as P
from ..common import AppContext, default_run, run_choices, single_texts, texts_for, user_message


def refresh_runs(ctx: AppContext, key: str, state: dict, current: str | None = None):
    """Run picker choices. The picker moves to this session's latest run when there is one it has
    not shown yet (state[key] is the latest run when the picker was last set); otherwise it stays."""
    state = state or {}
    choices = run_choices(ctx.store, state)
    ids = [c[1] for c in choices]
    value = default_run(choices, state)
    if current in ids and state.get(key, "") == state.get("last_run"):
        value = current
    return gr.update(choices=choices, value=value)


def first_interesting_step(trace: Trace) -> int:
    """The first step with a draft (else 0)."""
    for s in trace.steps:
        if s.tokens:
            return s.index
    return 0


def mask_matrix(step: Step) -> list[list[bool]]:
    """The tree attention mask, from workbench.draft (the engine's own buffer)."""
    return Draft(list(step.tokens), list(step.parents)).ancestor_matrix().tolist()


def step_view(ctx: AppContext, run_id: str | None, step_index: float | None):
    """(info markdown, tree figure, mask figure update, output tokens html) for one step of a run."""
    if not run_id:
        msg = "No run yet: run something in the Playground first."
        return msg, P.empty_figure(msg), gr.update(visible=False), ""
    try:
        rec = ctx.store.get_run(run_id)
        trace = ctx.store.load_trace(run_id)
    except Exception as exc:  # noqa: BLE001
        msg = user_message(exc)
        return f"**Error:** {msg}", P.empty_figure(msg), gr.update(visible=False), ""
    if not trace.steps:
        msg = f"Run {rec.id[:8]} has no steps ({rec.status})."
        return msg, P.empty_figure(msg), gr.update(visible=False), ""
    idx = int(step_index or 0)
    idx = min(max(idx, 0), len(trace.steps) - 1)
    step = trace.steps[idx]
    out_texts = texts_for(rec.target, trace.output_ids)
    before = sum(len(s.committed) for s in trace.steps[:idx])
    context = list(trace.prompt_ids) + list(trace.output_ids)
    root_id = context[len(trace.prompt_ids) + before - 1] if len(trace.prompt_ids) + before > 0 else None
    extra = [root_id] if root_id is not None else []
    labels = single_texts(rec.target, list(step.tokens) + [step.bonus_token] + extra)
    node_texts, bonus_text = labels[:len(step.tokens)], labels[len(step.tokens)]
    root_text = labels[-1] if root_id is not None else ""
    fig = P.tree_figure(step, node_texts, root_text=root_text, bonus_text=bonus_text)
    if step.tokens and not P.is_chain(step):
        mask = gr.update(visible=True, value=P.mask_figure(step, node_texts, mask_matrix(step)))
    else:
        mask = gr.update(visible=False)
    outcome = P.step_outcome(step)
    committed = "".join(P.display_token(t) for t in out_texts[before:before + len(step.committed)])
    info = (f"**Run `{rec.id[:8]}`** · {rec.method} · {rec.target}" + (f" ← {rec.draft}" if rec.draft else "")
            + f"  \n**Step {step.index}** of {len(trace.steps) - 1} ({step.kind}): "
            + (f"drafted {step.n_draft} node{'s' * (step.n_draft != 1)}"
               + (" (tree)" if not P.is_chain(step) else "") + f", accepted {step.n_accepted}, "
               if step.tokens else "no draft, ")
            + f"then the target's {'token' if outcome == 'plain' else outcome} · committed `{committed}` · "
            + f"draft {1000 * step.draft_s:.1f} ms, verify {1000 * step.verify_s:.1f} ms")
    tokens = P.token_html(trace, out_texts, highlight_step=step.index)
    return info, fig, mask, tokens


def load_run(ctx: AppContext, state: dict, run_id: str | None):
    """A new run was picked: reset the slider to its first drafted step and draw it."""
    state = dict(state or {})
    state["tree_seen"] = state.get("last_run")
    if not run_id:
        return (gr.update(maximum=1, value=0), *step_view(ctx, None, 0), state)
    try:
        trace = ctx.store.load_trace(run_id)
    except Exception as exc:  # noqa: BLE001
        msg = user_message(exc)
        return (gr.update(maximum=1, value=0), f"**Error:** {msg}", P.empty_figure(msg), gr.update(visible=False), "",
                state)
    n = max(len(trace.steps) - 1, 1)
    first = first_interesting_step(trace)
    return (gr.update(maximum=n, value=first), *step_view(ctx, run_id, first), state)


def build_tree_tab(ctx: AppContext, state: gr.State) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["run"] = gr.Dropdown([], label="Run", elem_id="tree-run", scale=4,
                               info="● marks runs from this session")
        c["refresh"] = gr.Button("Refresh", elem_id="tree-refresh", scale=0, size="sm")
    c["step"] = gr.Slider(0, 1, value=0, step=1, label="Step (target forward)", elem_id="tree-step")
    c["info"] = gr.Markdown("", elem_id="tree-info")
    gr.HTML('<div style="font-size:13px;color:#555">Nodes are draft tokens (hover: draft probability q, '
            'target probability p). <b style="color:#2e9d4a">Green</b>: the accepted path; grey: rejected; '
            '<b style="color:#1f6fd1">blue ◆</b> bonus token after a fully accepted draft; '
            '<b style="color:#e8772e">orange ◆</b> the target\'s correction after a rejection.</div>')
    c["plot"] = gr.Plot(P.empty_figure("pick a run"), elem_id="tree-plot", show_label=False)
    c["mask"] = gr.Plot(visible=False, elem_id="tree-mask", show_label=False)
    c["tokens"] = gr.HTML("", elem_id="tree-tokens")

    load = functools.partial(load_run, ctx)
    show = functools.partial(step_view, ctx)
    c["run"].change(load, [state, c["run"]], [c["step"], c["info"], c["plot"], c["mask"], c["tokens"], state],
                    api_name="tree")
    c["step"].input(show, [c["run"], c["step"]], [c["info"], c["plot"], c["mask"], c["tokens"]],
                    trigger_mode="always_last", api_name="tree_step")
    refresh = functools.partial(refresh_runs, ctx, "tree_seen")
    c["refresh"].click(refresh, [state, c["run"]], c["run"], api_visibility="private")
    c["on_select"] = (refresh, [state, c["run"]], c["run"])
    return c
