"""What the tabs share: the app context, per-session state, run pickers, error messages.

`AppContext` holds what is the same for every user of one app (the run store,
the default target and backend, the exposure policy); handlers receive it bound with
functools.partial. Anything that belongs to one user lives in the session state
dict (a `gr.State`): the ids of the runs this session made and the settings of
its latest run. `check_run_request` is the server-side check of what a page
asks to run (a slider's maximum is only a hint to the browser). The token-text
helpers the tabs use (texts_for, single_texts, token_pieces, model_decoder) live
in workbench.tokens, which needs only a model's tokenizer; they are re-exported here.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from store import RunStore, StoreError
from workbench.config import ConfigError, is_int, shown
from workbench.models import available_models
from workbench.models.errors import ModelError
from workbench.tokens import decoder as model_decoder  # noqa: F401  (re-exported for the tabs)
from workbench.tokens import single_texts, texts_for, token_pieces  # noqa: F401  (re-exported for the tabs)

from .exposure import ExposurePolicy
from .presenters.choices import draft_choices as draft_choices_of
from .presenters.choices import fastest_note, precision_specs

NONE_DRAFT = "none"
BUILTIN_TARGETS = ["smollm2-135m", "tiny-random", "tiny-random:seed=1", "smollm2-135m:bf16", "tiny-random:bf16"]
DRAFT_MODELS = ["smollm2-135m", "tiny-random", "tiny-random:seed=1"]  # offered as drafts in every precision
BUILTIN_DRAFTS = [NONE_DRAFT] + [spec for m in DRAFT_MODELS for spec in precision_specs(m)]


@dataclass
class AppContext:
    """Shared by every session of one app: never holds per-user data."""

    store: RunStore
    default_target: str
    # One decode at a time on the device, whoever asked: held by the decode thread for the
    # whole api.run, so a run that is still winding down after Stop (or after its page went
    # away) finishes its step before the next one starts. Gradio's queue slot alone is not
    # enough: cancelling an event frees the slot while the worker thread is still decoding.
    device_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Exposed servers: the model allow-list, no deleting (ui.exposure); the default allows everything.
    policy: ExposurePolicy = field(default_factory=ExposurePolicy)
    # The Backend dropdown's initial value (`workbench ui --backend`); each session picks its own.
    default_backend: str = "eager"


# The longest generation one click may ask for: keeps the shared decode slot from being held for minutes.
UI_MAX_NEW_TOKENS = 512


def check_run_request(ctx: AppContext, target: str, draft: str | None, max_new_tokens: Any) -> int:
    """The page's max new tokens as an int in [1, UI_MAX_NEW_TOKENS], for models the policy allows.

    Raises ConfigError / ModelError with one line for the status message.
    """
    n = max_new_tokens
    ok = is_int(n) or (isinstance(n, float) and math.isfinite(n) and n.is_integer())
    if not ok or not 1 <= n <= UI_MAX_NEW_TOKENS:
        raise ConfigError(f"max new tokens must be a whole number from 1 to {UI_MAX_NEW_TOKENS} in the app, "
                          f"got {shown(n)}")
    ctx.policy.check_model(target)
    ctx.policy.check_model(draft)
    return int(n)


def new_session_state() -> dict[str, Any]:
    """The per-session state: runs made in this session (newest last) and the latest run's settings."""
    return {"runs": [], "last_run": None, "last_settings": None}


def model_choices(default_target: str) -> tuple[list[str], list[str]]:
    """Target and draft dropdown choices: the built-in specs (plus gemma3-270m when installed); the drafts in
    every precision the workbench supports (fp32, bf16, fp16, int8)."""
    targets = list(BUILTIN_TARGETS)
    drafts = list(BUILTIN_DRAFTS)
    try:
        for m in available_models():
            if m["name"] not in targets and m.get("installed"):
                targets.append(m["name"])
                drafts += precision_specs(m["name"])
    except Exception:  # noqa: BLE001 - the catalogue is a nicety; the built-ins always work
        pass
    if default_target not in targets:
        targets.insert(0, default_target)
    return targets, drafts


def measured_here(backend: str = "eager") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What this machine has measured already (never measures): the cached precision timings
    (workbench.backend.speed) and the cached cost profiles on `backend` with this process's thread count
    (workbench.backend.profile). ([], []) when neither can be read."""
    try:  # here: both read torch's device and thread count
        import torch

        from workbench.backend.profile import cached_profiles
        from workbench.backend.speed import cached_precision_speeds

        threads = torch.get_num_threads()
        profiles = [r for r in cached_profiles() if r.get("backend") == backend and r.get("threads") == threads]
        return cached_precision_speeds(), profiles
    except Exception:  # noqa: BLE001 - a nicety: the list works without it
        return [], []


def draft_choices(drafts: list[str], backend: str = "eager") -> tuple[list[tuple[str, str]], str]:
    """The Draft model dropdown's (label, spec) choices, the fastest precision of each model here marked, and the
    line that says what marked it (ui.presenters.choices; from cached measurements only)."""
    speeds, profiles = measured_here(backend)
    return draft_choices_of(drafts, speeds, profiles), fastest_note(speeds, profiles)


def default_draft(target: str) -> str:
    """A natural draft for a target: the same model in bf16 (the spec itself if it already names a dtype)."""
    target = (target or "").strip()
    if any(opt.strip().lower() in ("bf16", "fp16", "fp32") for opt in target.split(":")[1:]):
        return target
    return f"{target}:bf16" if target else NONE_DRAFT


def norm_draft(draft: str | None) -> str | None:
    if draft is None:
        return None
    draft = str(draft).strip()
    return None if draft in ("", NONE_DRAFT, "(none)") else draft


def user_message(exc: BaseException) -> str:
    """One clear line for the page; never a stack trace."""
    msg = " ".join(str(exc).split())
    if isinstance(exc, (ConfigError, ModelError, StoreError)):
        return msg or type(exc).__name__
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


TICK_EVERY_S = 1.0  # how often the status line of long work (compiling, loading) shows the seconds so far


def device_thread(ctx: AppContext, job: Callable[[Callable[[str], None]], Any], events: Any,
                  name: str) -> threading.Thread:
    """Run `job(say)` in a daemon thread holding the device lock (one decode at a time, whoever asked), saying
    so while it waits. On the queue `events`: ("progress", message) for each `say`, then ("done", what the job
    returned) or ("error", the exception)."""
    def say(message: str) -> None:
        events.put(("progress", message))

    def work():
        try:
            if not ctx.device_lock.acquire(blocking=False):
                say("Waiting for the run on the device to finish...")
                ctx.device_lock.acquire()
            try:
                events.put(("done", job(say)))
            finally:
                ctx.device_lock.release()
        except BaseException as exc:  # noqa: BLE001 - reported in the page
            events.put(("error", exc))

    t = threading.Thread(target=work, name=name, daemon=True)
    t.start()
    return t


def ongoing(message: str) -> bool:
    """A progress message about work still going on ("compiling ...", "loading ..."), not one saying it ended."""
    return message.rstrip().endswith(("...", "…"))


def status(kind: str, text: str) -> str:
    """Status line markdown: kind is ok / error / info / busy / warn (a bold word, then the text)."""
    word = {"ok": "Done", "error": "Error", "info": "Note", "busy": "Working", "warn": "Note"}.get(kind, "")
    return f"**{word}:** {text}" if word else text


# ---------------------------------------------------------------- run pickers


def run_label(rec: Any) -> str:
    prompt = " ".join((rec.prompt or "").split())
    prompt = prompt if len(prompt) <= 40 else prompt[:39] + "…"
    when = rec.created_at.astimezone().strftime("%H:%M:%S") if rec.created_at else ""
    return f"{rec.id[:8]} · {rec.method} · {rec.status} · {when} · {prompt}"


def run_choices(store: RunStore, state: dict[str, Any] | None, limit: int = 100) -> list[tuple[str, str]]:
    """(label, id) of recent runs, this session's runs first (newest first)."""
    recs = store.list_runs(limit=limit)
    mine = list(reversed((state or {}).get("runs", [])))
    order = {rid: i for i, rid in enumerate(mine)}
    recs.sort(key=lambda r: (0, order[r.id]) if r.id in order else (1, 0))
    return [(("● " if r.id in order else "") + run_label(r), r.id) for r in recs]


def default_run(choices: list[tuple[str, str]], state: dict[str, Any] | None) -> str | None:
    last = (state or {}).get("last_run")
    ids = [c[1] for c in choices]
    if last in ids:
        return last
    return ids[0] if ids else None
