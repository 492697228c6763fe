"""Playground tab: pick models and a method, run a prompt, watch the tokens arrive coloured by origin.

The method's parameter form is drawn from its declared schema into a fixed pool
of slots (each slot has a Number, a Dropdown, a Checkbox and a Textbox; the one
that fits the parameter's type is shown and relabelled; a head method's `head` is
a dropdown of the heads that fit the target, with their held-out accuracy). The
draft list holds every model in every precision, the fastest here marked from
cached measurements only (ui.common.draft_choices); the method list is grouped by
family, each method with one line on when it pays. `run_stream` runs
`workbench.api.run` in a worker thread and yields the page as steps arrive; a
plain-decoding baseline of the same prompt, settings and backend is reused from
the store when there is one, or made with one click ("Run baseline"). The speedup
card names that baseline's age, backend and machine, offers "Re-run baseline"
when it is stale or from elsewhere, and gives the spread over stored repeats or
the measured run-to-run variation (ui.presenters.speedup).

The Backend dropdown (eager / compiled, workbench.backend) is an input of each
run; compiling happens before a run's clock starts, is shown in the status line
while it lasts (with the estimate workbench.backend gives) and on the metric cards
afterwards, never counted in tokens/s. So is measuring this machine's cost profile
before a cost-aware method's first run (with its estimate); a run's notes (cost-aware
sizing that chose not to draft and why, a profile the run found stale) close the status
line and stand under the cards (ui.presenters.notes).
"""
from __future__ import annotations

import functools
import html
import queue
import threading
import time
from typing import Any, Iterator

import gradio as gr

from workbench import api
from workbench import metrics as M
from workbench.backend import BACKENDS, check_backend
from workbench.cluster import cluster_address
from workbench.config import BASELINE, HEAD_KINDS, ConfigError, SamplingConfig
from workbench.heads import list_heads
from workbench.methods import get_method, list_methods, methods_by_family
from workbench.preflight import check_request
from workbench.trace import Trace

from .. import presenters as P
from ..common import (TICK_EVERY_S, AppContext, check_run_request, default_draft, draft_choices, model_choices,
                      model_decoder, norm_draft, ongoing, status, texts_for, token_pieces, user_message)

MIN_SLOTS = 6


def slot_count() -> int:
    """Parameter slots the form needs: as many as the registered method with the most parameters."""
    return max([MIN_SLOTS] + [len(m.params) for m in list_methods()])


N_SLOTS = slot_count()  # the built-in methods are registered by the import above
SLOT_KINDS = ("number", "choice", "bool", "text")  # the components of one slot, in order
DEFAULT_PROMPT = "Explain in two sentences why the sky is blue."
STREAM_EVERY_S = 0.15


class RunCancelled(Exception):
    """Raised inside the decode thread when the page stopped listening (Stop button, closed tab)."""


# ---------------------------------------------------------------- method form


def slot_kind(ptype: str) -> str:
    return {"int": "number", "float": "number", "choice": "choice", "bool": "bool"}.get(ptype, "text")


def head_kind(cls: Any) -> str | None:
    """The head kind a method drafts with (eagle, medusa, hydra), None for the others."""
    kind = getattr(cls, "kind", None)
    return kind if kind in HEAD_KINDS else None


def param_slot_kind(cls: Any, p: Any) -> str:
    """The slot component a parameter is shown in: a head method's `head` is a dropdown of the heads that fit."""
    return "choice" if p.name == "head" and head_kind(cls) else slot_kind(p.type)


def head_options(target: str | None, kind: str) -> list[tuple[str, str]]:
    """The head dropdown's choices for `target`: the default, then the shipped, trained and imported heads of
    `kind` whose card names the target's model, with their held-out accuracy (workbench.heads.list_heads)."""
    try:
        heads = list_heads(kind)
    except Exception:  # noqa: BLE001 - an unreadable heads folder: the default (and a typed directory) still work
        heads = []
    return P.head_choices(heads, (target or "").strip(), kind)


HEAD_INFO = ("the heads that fit this target (shipped, trained, imported), with their held-out accuracy; "
             "or type a head directory")
ADVISOR_NOTE = "Grouped by family. Not sure which pays here? See the Advisor tab."


def method_info_html(method: str) -> str:
    try:
        cls = get_method(method)
    except Exception as exc:  # noqa: BLE001
        return f'<div class="wb-method-info">{html.escape(user_message(exc))}</div>'
    color, text = ("#2e9d4a", "lossless") if cls.lossless else ("#c0392b", "lossy")
    badge = (f'<span class="wb-badge wb-badge-{text}" style="background:{color};color:#fff;border-radius:10px;'
             f'padding:1px 8px;font-size:12px;margin-left:6px">{text}</span>')
    extra = []
    if cls.needs_draft_model:
        extra.append("needs a draft model")
    if cls.tree:
        extra.append("drafts trees")
    tail = f' <span style="color:#888;font-size:12px">({", ".join(extra)})</span>' if extra else ""
    facts = cls.facts()
    pays = (f'<div class="wb-method-pays" style="color:#555;font-size:13px;margin-top:2px"><i>Pays when</i> '
            f'{html.escape(facts["pays_when"])}.</div>') if facts["pays_when"] else ""
    return (f'<div class="wb-method-info"><div class="wb-method-family" style="color:#888;font-size:12px">'
            f'{html.escape(facts["family"])}</div><b>{html.escape(cls.label or cls.name)}</b>{badge}{tail}'
            f'<div style="color:#555;font-size:13px;margin-top:2px">{html.escape(cls.description)}</div>{pays}</div>')


def method_form(method: str, target: str | None = None) -> list[Any]:
    """Updates for the method info and every slot component (N_SLOTS × SLOT_KINDS); a head method's `head`
    is a dropdown of the heads that fit `target`."""
    try:
        cls = get_method(method)
        schema = list(cls.params)
    except Exception:  # noqa: BLE001
        cls, schema = None, []
    if len(schema) > N_SLOTS:  # a method registered after the form was built: never drop a parameter silently
        raise gr.Error(f"method '{method}' has {len(schema)} parameters but the form has {N_SLOTS} slots; "
                       "restart the app after registering it")
    updates: list[Any] = [method_info_html(method)]
    for i in range(N_SLOTS):
        p = schema[i] if i < len(schema) else None
        kind = param_slot_kind(cls, p) if p else None
        for k in SLOT_KINDS:
            if p is None or k != kind:
                updates.append(gr.update(visible=False))
            elif k == "number":
                updates.append(gr.update(visible=True, label=p.name, info=p.help, value=p.default,
                                         minimum=p.min, maximum=p.max, step=1 if p.type == "int" else 0.01))
            elif k == "choice" and p.type != "choice":  # a head: the heads that fit, or a directory typed in
                updates.append(gr.update(visible=True, label=p.name, info=HEAD_INFO, value=p.default,
                                         choices=head_options(target, head_kind(cls)), allow_custom_value=True))
            elif k == "choice":
                updates.append(gr.update(visible=True, label=p.name, info=p.help, choices=list(p.choices),
                                         value=p.default, allow_custom_value=False))
            elif k == "bool":
                updates.append(gr.update(visible=True, label=p.name, info=p.help, value=bool(p.default)))
            else:
                updates.append(gr.update(visible=True, label=p.name, info=p.help, value=str(p.default)))
    return updates


def head_slot_update(method: str, target: str | None) -> list[Any]:
    """A new target: a head method's head dropdown lists that target's heads (back to the default); every
    other slot is left as it is."""
    updates: list[Any] = [gr.update() for _ in range(N_SLOTS * len(SLOT_KINDS))]
    try:
        cls = get_method(method)
    except Exception:  # noqa: BLE001
        return updates
    kind = head_kind(cls)
    for i, p in enumerate(cls.params[:N_SLOTS]):
        if kind and p.name == "head":
            updates[i * len(SLOT_KINDS) + SLOT_KINDS.index("choice")] = gr.update(
                choices=head_options(target, kind), value=p.default)
    return updates


def collect_params(method: str, slot_values: tuple | list) -> dict[str, Any]:
    """Map the slot values back to the method's parameters (validated later by workbench.api.run)."""
    params: dict[str, Any] = {}
    cls = get_method(method)
    schema = cls.params
    if len(schema) > N_SLOTS:
        raise ConfigError(f"method '{method}' has {len(schema)} parameters but the form has {N_SLOTS} slots; "
                          "restart the app after registering it")
    for i, p in enumerate(schema):
        value = slot_values[i * len(SLOT_KINDS) + SLOT_KINDS.index(param_slot_kind(cls, p))] \
            if len(slot_values) > i * len(SLOT_KINDS) else None
        if value is None or value == "":
            continue
        if p.type == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        params[p.name] = value
    return params


def draft_note(method: str, draft: str | None) -> str:
    try:
        cls = get_method(method)
    except Exception:  # noqa: BLE001
        return ""
    if cls.needs_draft_model and not norm_draft(draft):
        return status("warn", f"**{cls.label or cls.name}** needs a draft model: pick one under *Draft model* "
                              "(e.g. the target's `:bf16` copy).")
    if not cls.needs_draft_model and norm_draft(draft):
        return status("info", f"{cls.label or cls.name} drafts without a model; the draft model is not used.")
    return ""


def draft_for_target(target: str, draft: str | None):
    """A new target: keep 'none', otherwise offer the new target's bf16 copy as the draft."""
    if not norm_draft(draft):
        return gr.update()
    return gr.update(value=default_draft(target))


# ---------------------------------------------------------------- running


def _sampling(temperature, top_p, top_k, seed):
    return SamplingConfig(temperature=float(temperature or 0.0), top_p=float(top_p if top_p is not None else 1.0),
                          top_k=int(top_k or 0), seed=int(seed or 0))


def _cards(ctx: AppContext, trace: Trace, run_id: str | None) -> tuple[str, str | None]:
    """Metric cards with the backend, its warm-up and the speedup from a stored baseline (of the same
    backend) with what it is worth (ui.presenters.speedup), then the quality card (lossless or LOSSY, and
    the quality against plain decoding: ui.presenters.quality); and the baseline button's label: "Run
    baseline" when there is none, "Re-run baseline" when it is stale or from another machine, None to hide it."""
    if run_id is None:
        return P.metric_cards_html(trace) + P.quality_card_html(None, trace.lossy), None
    rec = ctx.store.get_run(run_id)
    cards, button = _speed_cards(ctx, trace, rec)
    return cards + P.quality_card_html(rec.quality, rec.lossy), button


def _speed_cards(ctx: AppContext, trace: Trace, rec: Any) -> tuple[str, str | None]:
    """`_cards`' metric cards and baseline button label, for a stored run."""
    env = rec.env or {}
    run_env = dict(backend=env.get("backend") or "eager", warmup_s=env.get("warmup_s"))
    if trace.method == BASELINE:
        return P.metric_cards_html(trace, **run_env), None
    base = ctx.store.baseline_for(rec)
    if base is None:
        note = f"no {run_env['backend']} baseline yet: click “Run baseline”"
        return P.metric_cards_html(trace, baseline_note=note, **run_env), P.rerun_label(None)
    facts = P.baseline_facts(rec, base)
    spread, variation = speedup_evidence(ctx, rec, base, trace)
    lines = P.speedup_lines(facts, spread, variation)
    return P.metric_cards_html(trace, facts.tokens_per_s, baseline_note=lines[0], speedup_lines=lines[1:],
                               speedup_warn=facts.rerun, **run_env), P.rerun_label(facts)


def _tps(records: list) -> list[float]:
    return [float(r.metrics["tokens_per_s"]) for r in records if r.metrics.get("tokens_per_s") is not None]


def speedup_evidence(ctx: AppContext, rec: Any, base: Any, trace: Trace):
    """(spread, variation) for a run's speedup card: the speedup over the stored repeats of the run and of its
    baseline (store.RunStore.repeats_of), and, when neither was repeated, the run-to-run variation measured
    from every repeated setting on the run's machine (RunStore.repeat_groups); (None, None) if the store
    cannot say."""
    try:
        runs = _tps(ctx.store.repeats_of(rec)) or [P.live_summary(trace).tokens_per_s]
        spread = M.speedup_spread(runs, _tps(ctx.store.repeats_of(base)))
        if spread is not None and (spread.n_runs > 1 or spread.n_baselines > 1):
            return spread, None
        groups = ctx.store.repeat_groups(machine=rec.env or None)
        return spread, M.run_to_run_variation(_tps(g) for g in groups)
    except Exception:  # noqa: BLE001 - the card still shows the speedup itself
        return None, None


def baseline_button(label: str | None, **extra: Any):
    """The baseline button: shown with `label`, or hidden (None)."""
    return gr.update(visible=label is not None, value=label or P.rerun_label(None), **extra)


def warmup_note(ctx: AppContext, run_id: str | None) -> str:
    """' Compiled in 95 s before the run (not counted).' for a run that compiled first, else ''."""
    if not run_id:
        return ""
    try:
        env = ctx.store.get_run(run_id).env or {}
    except Exception:  # noqa: BLE001 - a nicety for the status line
        return ""
    w = env.get("warmup_s") or 0
    return f" Compiled in {w:.0f} s before the run (not counted)." if w > 0 else ""


def _decode_thread(device_lock: threading.Lock, kwargs: dict[str, Any], events: "queue.Queue",
                   cancel: threading.Event) -> threading.Thread:
    """Run api.run in a thread that holds the device lock from before loading until the run is closed."""
    def on_step(step, tr):
        if cancel.is_set():
            raise RunCancelled("stopped before the end")
        events.put(("step", step))

    def work():
        try:
            if not device_lock.acquire(blocking=False):
                events.put(("progress", "Waiting for the previous run to finish its last step…"))
                device_lock.acquire()
            try:
                if cancel.is_set():  # the page went away while this run was waiting
                    raise RunCancelled("stopped before it started")
                events.put(("done", api.run(**kwargs, on_step=on_step,
                                            progress=lambda m: events.put(("progress", m)))))
            finally:
                device_lock.release()
        except BaseException as exc:  # noqa: BLE001 - reported in the page
            events.put(("error", exc))

    t = threading.Thread(target=work, name="workbench-run", daemon=True)
    t.start()
    return t


RUN_ON = ("in process", "cluster workers")


def cluster_for(run_on: str | None) -> str | None:
    """workbench.api.run's `cluster` for a Run on choice: "none" keeps the run in this process,
    None follows $WORKBENCH_CLUSTER (set by `workbench ui --cluster`)."""
    return "none" if run_on == RUN_ON[0] else None


def set_run_on(state: dict, run_on: str) -> dict:
    """The Run on radio: this session's runs (and their baselines) go in process or to cluster workers."""
    return {**(state or {}), "run_on": run_on}


def stream_run(ctx: AppContext, *, method: str, prompt: str, target: str, draft: str | None, params: dict,
               sampling, max_new_tokens: int, chat: bool, cluster: str | None = None,
               backend: str | None = None, acceptance: Any = None, kv: Any = None) -> Iterator[tuple[str, str, Any]]:
    """Run in a thread; yield ("progress", message, None), ("tokens", html, trace) and finally
    ("done", run_id, RunResult) or ("error", message, None). A progress message about ongoing work
    (compiling for the compiled backend takes minutes) is repeated every TICK_EVERY_S with the seconds so far."""
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    kwargs = dict(method=method, prompt=prompt, target=target, draft=draft, params=params, sampling=sampling,
                  max_new_tokens=max_new_tokens, chat=chat, store=ctx.store, source="ui", cluster=cluster,
                  backend=backend, acceptance=acceptance, kv=kv)
    _decode_thread(ctx.device_lock, kwargs, events, cancel)
    trace = Trace(method=method, params=params, prompt_ids=[])
    ids: list[int] = []
    texts: list[str] = []
    decode = None
    last_yield = 0.0
    waiting: tuple[str, float] | None = None  # the latest ongoing-work message and when it came
    try:
        while True:
            try:
                kind, payload = events.get(timeout=STREAM_EVERY_S)
            except queue.Empty:
                kind, payload = "tick", None
            if kind == "progress":
                message = str(payload)
                waiting = (message, time.monotonic()) if ongoing(message) else None
                last_yield = time.monotonic()
                yield "progress", message, None
            elif kind == "tick" and waiting and not ids and time.monotonic() - last_yield >= TICK_EVERY_S:
                last_yield = time.monotonic()
                yield "progress", f"{waiting[0]} {last_yield - waiting[1]:.0f} s so far", None
            elif kind == "step":
                trace.steps.append(payload)
                ids.extend(payload.committed)
            elif kind == "error":
                yield "error", user_message(payload), None
                return
            elif kind == "done":
                yield "done", payload.run_id, payload
                return
            if ids and len(texts) < len(ids) and time.monotonic() - last_yield >= STREAM_EVERY_S:
                decode = decode or model_decoder(target)
                texts.extend(token_pieces(decode, ids, start=len(texts)) if decode else
                             [f"⟨{t}⟩" for t in ids[len(texts):]])
                last_yield = time.monotonic()
                yield "tokens", P.token_html(trace, texts), trace
    finally:
        cancel.set()  # a no-op after a normal end; stops the decode thread if the page went away


def run_stream(ctx: AppContext, state: dict, target: str, draft: str, method: str, prompt: str, chat: bool,
               max_new_tokens: float, temperature: float, top_p: float, top_k: float, seed: float,
               *slot_values: Any, backend: str | None = None, accept: str | None = None,
               kv: str | None = None) -> Iterator[tuple]:
    """The Run button. Yields (status, output, cards, run id, baseline button, state).

    backend: "eager" or "compiled" (None: the app's default, `workbench ui --backend`).
    accept, kv: the lossy options' text forms (docs/lossy.md; blank: exact acceptance, no KV compression)."""
    state = dict(state or {})
    keep = gr.update()
    draft = norm_draft(draft)
    target = (target or "").strip() or ctx.default_target

    def fail(msg: str):
        return (status("error", msg), keep, keep, keep, gr.update(visible=False), state)

    try:
        cls = get_method(method)
        max_new = check_run_request(ctx, target, draft if cls.needs_draft_model else None, max_new_tokens)
        backend = check_backend_choice(ctx, backend)
        give_draft = (f"pick one under *Draft model* (e.g. `{default_draft(target)}`), or choose a method that "
                      "drafts without one")
        req = check_request(method, prompt or "", draft=draft, params=collect_params(method, slot_values),
                            sampling=_sampling(temperature, top_p, top_k, seed), max_new_tokens=max_new,
                            backend=backend, give_draft=give_draft, acceptance=(accept or "").strip() or None,
                            kv=(kv or "").strip() or None, give_eager="choose *eager* under *Backend*")
        params, sampling = req.params, req.sampling
    except Exception as exc:  # noqa: BLE001
        yield fail(user_message(exc))
        return

    yield (status("busy", f"Starting {cls.label or method} on {target} ({backend} backend)…"),
           P.token_html(Trace(method, {}, []), []), "", "", gr.update(visible=False), state)
    cluster = cluster_for(state.get("run_on"))
    for kind, payload, extra in stream_run(ctx, method=method, prompt=prompt, target=target, draft=draft,
                                           params=params, sampling=sampling, max_new_tokens=max_new, chat=bool(chat),
                                           cluster=cluster, backend=backend, acceptance=req.acceptance, kv=req.kv):
        if kind == "progress":
            yield status("busy", payload), keep, keep, keep, keep, state
        elif kind == "tokens":
            n = len(extra.output_ids)
            yield (status("busy", f"Decoding… {n} tokens, {len(extra.steps)} target forwards"), payload,
                   P.metric_cards_html(extra, backend=backend), keep, keep, state)
        elif kind == "error":
            yield fail(f"Run failed: {payload}")
            return
        elif kind == "done":
            res = extra
            texts = texts_for(res.target, res.output_ids)
            cards, button = _cards(ctx, res.trace, res.run_id)
            state["runs"] = list(state.get("runs", [])) + [res.run_id]
            state["last_run"] = res.run_id
            state["last_settings"] = dict(target=res.target, prompt=prompt, chat=bool(chat),
                                          sampling=sampling.to_dict(), max_new_tokens=max_new, cluster=cluster,
                                          backend=backend)
            s = res.summary
            msg = (f"{s.new_tokens} tokens in {s.wall_s:.2f} s ({res.trace.stop_reason or 'stopped'}).")
            noted = P.notes_status(res.trace)  # e.g. cost-aware sizing chose not to draft, and why
            msg += warmup_note(ctx, res.run_id) + (f" {noted}" if noted else "")
            msg += " Open *Draft tree* or *Latency* to look inside."
            yield (status("warn" if noted else "ok", msg), P.token_html(res.trace, texts), cards,
                   f"Run id: `{res.run_id}`" + worker_note(ctx, res), baseline_button(button), state)
            return


def check_backend_choice(ctx: AppContext, backend: Any) -> str:
    """The page's Backend choice, validated (None or empty: the app's default)."""
    return check_backend(backend if backend not in (None, "") else ctx.default_backend)


def worker_note(ctx: AppContext, res: Any) -> str:
    """Where a cluster run was decoded ('' for an in-process run); a shared server names no host."""
    w = getattr(res, "worker", None)
    if not w:
        return ""
    device = w.get("gpu") or "CPU"
    return f" · decoded on a cluster worker ({device})" if ctx.policy.exposed else \
        f" · decoded on cluster worker `{w.get('hostname')}` ({device})"


def stopped_message() -> str:
    return status("info", "Stopped. What was decoded so far is kept in History (status failed).")


def run_baseline(ctx: AppContext, state: dict) -> Iterator[tuple]:
    """The Run baseline button: plain decoding with the latest run's settings, then the speedup.

    Yields (status, cards, baseline button, state)."""
    state = dict(state or {})
    keep = gr.update()
    settings = state.get("last_settings")
    if not settings or not state.get("last_run"):
        yield status("error", "Run something first; the baseline repeats its prompt with plain decoding."), keep, \
            keep, state
        return
    backend = settings.get("backend") or "eager"  # the baseline runs where and how the run ran
    yield status("busy", f"Running the plain-decoding baseline ({backend} backend)…"), keep, \
        gr.update(interactive=False), state
    sampling = SamplingConfig(**settings["sampling"])
    for kind, payload, extra in stream_run(ctx, method=BASELINE, prompt=settings["prompt"],
                                           target=settings["target"], draft=None, params={}, sampling=sampling,
                                           max_new_tokens=settings["max_new_tokens"], chat=settings["chat"],
                                           cluster=settings.get("cluster"), backend=backend):
        if kind == "progress":
            yield status("busy", payload), keep, keep, state
        elif kind == "tokens":
            yield status("busy", f"Baseline: {len(extra.output_ids)} tokens…"), keep, keep, state
        elif kind == "error":
            yield status("error", f"Baseline failed: {payload}"), keep, gr.update(interactive=True), state
            return
        elif kind == "done":
            state["runs"] = list(state.get("runs", [])) + [payload]
            try:
                trace = ctx.store.load_trace(state["last_run"])
                cards, button = _cards(ctx, trace, state["last_run"])
            except Exception as exc:  # noqa: BLE001
                yield status("error", user_message(exc)), keep, gr.update(interactive=True), state
                return
            tps = extra.summary.tokens_per_s
            yield (status("ok", f"Baseline run `{payload[:8]}`: {tps:.1f} tok/s plain decoding ({backend})."
                                + warmup_note(ctx, payload)), cards,
                   baseline_button(button, interactive=True), state)
            return


# ---------------------------------------------------------------- layout


def on_cluster() -> bool:
    """Whether this app was started with a cluster (`workbench ui --cluster`, which sets $WORKBENCH_CLUSTER)."""
    try:
        return cluster_address() is not None
    except ValueError:  # a bad address: each run says so in one line
        return False


def build_playground_tab(ctx: AppContext, state: gr.State) -> dict[str, Any]:
    targets, drafts = model_choices(ctx.default_target)
    draft_list, fastest = draft_choices(drafts, ctx.default_backend)  # cached measurements only: never times here
    method_choices = P.method_choices([(family, [m.facts() for m in ms]) for family, ms in methods_by_family()])
    names = [name for _, name in method_choices]
    first = "speculative" if "speculative" in names else names[0]
    c: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            c["target"] = gr.Dropdown(targets, value=ctx.default_target, label="Target model",
                                      allow_custom_value=True, elem_id="pg-target",
                                      info="built-in name, local directory or hub id")
            c["draft"] = gr.Dropdown(draft_list, value=default_draft(ctx.default_target), label="Draft model",
                                     allow_custom_value=True, elem_id="pg-draft",
                                     info="for methods that draft with a model ('none' otherwise), in every "
                                          "precision; the fastest one here is marked when it was measured")
            c["draft_speed"] = gr.HTML(fastest, elem_id="pg-draft-speed")
            c["method"] = gr.Dropdown(method_choices, value=first, label="Method", elem_id="pg-method",
                                      info=ADVISOR_NOTE)
            c["method_info"] = gr.HTML(method_info_html(first), elem_id="pg-method-info")
            c["draft_note"] = gr.Markdown(draft_note(first, default_draft(ctx.default_target)),
                                          elem_id="pg-draft-note")
            c["backend"] = gr.Dropdown(list(BACKENDS), value=ctx.default_backend, label="Backend",
                                       elem_id="pg-backend",
                                       info="eager: stock forwards; compiled: static KV cache + torch.compile "
                                            "(compiles each model once, 2-5 min on a CPU, not counted)")
            slots: list[Any] = []
            initial = [{k: v for k, v in u.items() if k != "__type__"}
                       for u in method_form(first, ctx.default_target)[1:]]
            with gr.Group():
                for i in range(N_SLOTS):
                    kw = initial[i * len(SLOT_KINDS):(i + 1) * len(SLOT_KINDS)]
                    slots += [gr.Number(elem_id=f"pg-param-{i}-number", **kw[0]),
                              gr.Dropdown(elem_id=f"pg-param-{i}-choice", **kw[1]),
                              gr.Checkbox(elem_id=f"pg-param-{i}-bool", **kw[2]),
                              gr.Textbox(elem_id=f"pg-param-{i}-text", **kw[3])]
            c["slots"] = slots
            with gr.Accordion("Sampling and length", open=False):
                c["max_new"] = gr.Slider(1, 512, value=48, step=1, label="max new tokens", elem_id="pg-max-new")
                c["temperature"] = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0 = greedy)",
                                             elem_id="pg-temperature")
                c["top_p"] = gr.Slider(0.05, 1, value=1, step=0.05, label="top-p", elem_id="pg-top-p")
                with gr.Row():
                    c["top_k"] = gr.Number(0, precision=0, minimum=0, label="top-k (0 = off)", elem_id="pg-top-k")
                    c["seed"] = gr.Number(0, precision=0, minimum=0, label="seed", elem_id="pg-seed")
            with gr.Accordion("Lossy options (docs/lossy.md)", open=False):
                c["accept"] = gr.Textbox("", label="relaxed acceptance (LOSSY)", elem_id="pg-accept",
                                         placeholder="typical:eps=0.09,delta=0.3 · top_k:k=2 · ratio:ratio=0.5")
                c["kv"] = gr.Textbox("", label="KV-cache compression (LOSSY, eager)", elem_id="pg-kv",
                                     placeholder="h2o:budget=0.5 · streaming:budget=0.5,sinks=4 · int8 · int4:group=32")
        with gr.Column(scale=2):
            c["prompt"] = gr.Textbox(DEFAULT_PROMPT, lines=3, label="Prompt", elem_id="pg-prompt")
            with gr.Row():
                c["chat"] = gr.Checkbox(True, label="chat (apply the model's chat template)", elem_id="pg-chat")
                c["run"] = gr.Button("Run", variant="primary", elem_id="pg-run")
                clustered = on_cluster()
                c["run_on"] = gr.Radio(list(RUN_ON), value=RUN_ON[1] if clustered else RUN_ON[0],
                                       label="Run on", visible=clustered, elem_id="pg-run-on",
                                       info="decode on the cluster's workers or in this app's process")
                c["stop"] = gr.Button("Stop", variant="stop", elem_id="pg-stop")
            c["status"] = gr.Markdown("", elem_id="pg-status")
            gr.HTML(P.legend_html(), elem_id="pg-legend")
            c["output"] = gr.HTML(P.token_html(Trace("", {}, []), []), elem_id="pg-output")
            c["cards"] = gr.HTML("", elem_id="pg-cards")
            with gr.Row():
                c["run_id"] = gr.Markdown("", elem_id="pg-run-id")
                c["baseline"] = gr.Button("Run baseline", visible=False, elem_id="pg-baseline", size="sm")

    c["method"].change(method_form, [c["method"], c["target"]], [c["method_info"]] + slots,
                       api_visibility="private")
    c["target"].change(draft_for_target, [c["target"], c["draft"]], c["draft"], api_visibility="private")
    c["target"].change(head_slot_update, [c["method"], c["target"]], slots, api_visibility="private")
    c["run_on"].change(set_run_on, [state, c["run_on"]], state, api_name="run_on")
    for comp in (c["method"], c["draft"]):
        comp.change(draft_note, [c["method"], c["draft"]], c["draft_note"], api_visibility="private")
    inputs = [state, c["target"], c["draft"], c["method"], c["prompt"], c["chat"], c["max_new"], c["temperature"],
              c["top_p"], c["top_k"], c["seed"]] + slots
    # run_stream's keywords: /run's `backend` (default eager), `accept` and `kv` (default none) parameters
    by_name = {"backend": c["backend"], "accept": c["accept"], "kv": c["kv"]}
    outputs = [c["status"], c["output"], c["cards"], c["run_id"], c["baseline"], state]
    run_fn = functools.partial(run_stream, ctx)
    ev = c["run"].click(run_fn, inputs, outputs, inputs_kwargs=by_name, concurrency_limit=1,
                        concurrency_id="decode", api_name="run")
    ev2 = c["prompt"].submit(run_fn, inputs, outputs, inputs_kwargs=by_name, concurrency_limit=1,
                             concurrency_id="decode", api_visibility="private")
    c["stop"].click(stopped_message, None, c["status"], cancels=[ev, ev2], api_name="stop")
    c["baseline"].click(functools.partial(run_baseline, ctx), state, [c["status"], c["cards"], c["baseline"], state],
                        concurrency_limit=1, concurrency_id="decode", api_name="baseline")
    return c
