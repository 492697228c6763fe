"""The Gradio app: six tabs over one run store.

`build_app(db, default_target, default_backend=...)` lays out the Blocks
(Playground, Draft tree, Latency, History & compare, Train, Advisor); `launch(...)` serves it
(127.0.0.1 by default), what `workbench ui` calls; its `backend` is the
Playground's initial Backend choice (eager or compiled), which each session can change. Models are loaded once per process by
workbench.models and shared read-only; the decoding events share one queue slot
(concurrency_id "decode", limit 1) so runs from several tabs or users wait their
turn instead of competing for the CPU. Everything per user lives in `gr.State`.

`launch` first asks ui.exposure.plan_launch how to serve: on another interface
than loopback or with a share link it needs a login (--auth-file or
$WORKBENCH_AUTH, passed to Gradio's auth) unless told insecure=True, and the app
then runs under an exposure policy (model allow-list, no deleting, no stack
traces, no store path in the header).
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import gradio as gr

from store import RunStore
from workbench.backend import check_backend
from workbench.cluster import cluster_address, connect
from workbench.models import EMBEDDED_DEFAULT

from .common import AppContext, new_session_state
from .exposure import ExposurePolicy, plan_launch
from .tabs.history import build_history_tab
from .tabs.latency import build_latency_tab
from .tabs.playground import build_playground_tab, on_cluster
from .tabs.advisor import build_advisor_tab
from .tabs.train import build_train_tab
from .tabs.tree_viewer import build_tree_tab

TITLE = "Decoding Workbench"
CSS = """
#pg-output { min-height: 120px; border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 10px; }
#pg-status p, #hist-message p, #train-count p, #adv-status p, #adv-count p { margin: 0; }
.wb-tok:hover { outline: 1px solid #333; }
"""


def build_app(db: str | None = None, default_target: str | None = None,
              policy: ExposurePolicy | None = None, default_backend: str | None = None) -> gr.Blocks:
    """The app's Blocks over the run store at `db` (None: $WORKBENCH_DB or the user data dir).

    default_backend: the Backend dropdown's initial value (None: eager); raises ConfigError when unknown.
    """
    ctx = AppContext(store=RunStore(db), default_target=(default_target or EMBEDDED_DEFAULT).strip(),
                     policy=policy or ExposurePolicy(), default_backend=check_backend(default_backend))
    where = ("Shared server: a fixed set of models, deleting runs turned off." if ctx.policy.exposed
             else f"Store: `{ctx.store.path or 'memory'}`")
    if on_cluster():
        where += " Runs decode on cluster workers; each run's env names its worker and GPU."
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"## {TITLE}\nRun, see and compare fast decoding methods. {where}", elem_id="wb-header")
        state = gr.State(new_session_state())
        with gr.Tabs(elem_id="wb-tabs"):
            with gr.Tab("Playground", id="playground", elem_id="tab-playground"):
                build_playground_tab(ctx, state)
            with gr.Tab("Draft tree", id="tree", elem_id="tab-tree") as tree_tab:
                tree = build_tree_tab(ctx, state)
            with gr.Tab("Latency", id="latency", elem_id="tab-latency") as lat_tab:
                lat = build_latency_tab(ctx, state)
            with gr.Tab("History & compare", id="history", elem_id="tab-history") as hist_tab:
                hist = build_history_tab(ctx, state)
            with gr.Tab("Train", id="train", elem_id="tab-train") as train_tab:
                train = build_train_tab(ctx, state)
            with gr.Tab("Advisor", id="advisor", elem_id="tab-advisor") as advisor_tab:
                advisor = build_advisor_tab(ctx, state)
        tree_tab.select(*tree["on_select"], api_visibility="private")
        for fn, inputs, outputs in lat["on_select"]:
            lat_tab.select(fn, inputs, outputs, api_visibility="private")
        for fn, inputs, outputs in hist["on_select"]:
            hist_tab.select(fn, inputs, outputs, api_visibility="private")
        for fn, inputs, outputs in train["on_select"]:
            train_tab.select(fn, inputs, outputs, api_visibility="private")
        for fn, inputs, outputs in advisor["on_select"]:
            advisor_tab.select(fn, inputs, outputs, api_visibility="private")
    demo.workbench_context = ctx  # for tests and embedding; not per-user
    demo.workbench_css = CSS
    return demo


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, db: str | None = None,
           default_target: str | None = None, *, auth_file: str | None = None, insecure: bool = False,
           allow_models: Iterable[str] = (), cluster: str | None = None, backend: str | None = None,
           **launch_kwargs: Any) -> gr.Blocks:
    """Serve the app; returns the Blocks (call .close() to stop it when launched with prevent_thread_lock=True).

    backend: the Playground's initial Backend choice, "eager" (None: the default) or "compiled".
    Raises ConfigError before serving when an exposed app would have no login
    (see ui.exposure) or the backend is unknown. Extra keyword arguments go to gr.Blocks.launch.
    """
    backend = check_backend(backend)
    plan = plan_launch(host, share, auth_file=auth_file, insecure=insecure, allow_models=allow_models,
                       default_target=default_target)
    if cluster is not None:  # the Playground decodes on cluster workers; an unreachable cluster fails here, in one line
        address = cluster_address(cluster)
        if address is not None:
            connect(address)
        os.environ["WORKBENCH_CLUSTER"] = address or "none"  # what workbench.api.run uses when given no cluster
    demo = build_app(db=db, default_target=default_target, policy=plan.policy, default_backend=backend)
    demo.queue(default_concurrency_limit=4)
    launch_kwargs.setdefault("css", CSS)
    demo.launch(server_name=plan.host, server_port=port, share=plan.share, show_error=plan.show_error,
                auth=plan.auth, **launch_kwargs)
    return demo


