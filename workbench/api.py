"""One call to decode and log a run: what the CLI, the app, notebooks and benchmarks use.

`run()` validates everything before touching the store (so bad input never
leaves a row), loads and checks the models, writes the run as `running`,
decodes with the engine while streaming steps to the store, and ends the row
`finished` or `failed` (with the error and the steps decoded so far).
"""
from __future__ import annotations

import logging
import os
import platform
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .config import ConfigError, DecodeConfig, SamplingConfig
from .engine import GenerationResult, generate
from .methods import get_method, resolve_params
from .trace import Step, Trace

logger = logging.getLogger(__name__)

# Steps are written to the store in batches of this many (and at the end).
STEP_FLUSH_EVERY = 16
# Room for one step's draft nodes in a sliding-window cache: every built-in method's default
# draft is smaller; a larger custom tree still meets the cache's own CacheRollbackError.
SLIDING_WINDOW_MARGIN = 64


@dataclass
class RunResult:
    run_id: str | None
    method: str
    target: str
    draft: str | None
    prompt: str | list[dict]
    output_text: str
    output_ids: list[int]
    trace: Trace
    result: GenerationResult
    worker: dict[str, Any] | None = None  # the cluster worker that decoded it (node, host, GPU); None: in process

    @property
    def summary(self):
        return self.result.summary

    def to_json(self) -> dict[str, Any]:
        s = self.summary
        return {
            "run_id": self.run_id,
            "method": self.method,
            "target": self.target,
            "draft": self.draft,
            "output_text": self.output_text,
            "output_ids": self.output_ids,
            "metrics": {
                "tokens_per_s": s.tokens_per_s,
                "mean_accepted_tokens": s.mean_accepted_tokens,
                "mean_accepted_draft_tokens": s.mean_accepted_draft_tokens,
                "acceptance_rate": _none_if_nan(s.acceptance_rate),
                "target_forward_passes": s.target_forward_passes,
                "new_tokens": s.new_tokens,
                "wall_s": s.wall_s,
                "ttft_s": s.ttft_s,
                "peak_mem_mb": _none_if_nan(s.peak_mem_mb),
            },
            "stop_reason": self.trace.stop_reason,
        }


def _none_if_nan(x: float) -> float | None:
    return None if x != x else x


def environment(target=None) -> dict[str, Any]:
    """What a result depends on besides the code: hardware, versions, precision, threads."""
    import transformers

    from .models.loading import gqa_attention_in_effect

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_isa": cpu_isa(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "sdpa_gqa": gqa_attention_in_effect(),
    }
    if target is not None:
        env.update(device=str(target.device), dtype=str(target.dtype).replace("torch.", ""), quant=target.quant)
    return env


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def cpu_isa() -> str:
    """The vector extensions that decide which CPU kernels and dtypes are fast, e.g. 'avx2 avx512f amx_bf16'.

    Two machines with one model name ("Intel(R) Xeon(R) Processor" in a VM) can differ in exactly these.
    """
    have = set((_cpuinfo("flags") or "").split())
    return " ".join(flag for flag in ISA_FLAGS if flag in have)


def _cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or "unknown"


def _cpuinfo(field: str) -> str | None:
    """The first `field` line of /proc/cpuinfo (None where there is no such file or line)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def run(method: str, prompt: str | list[dict], *, target: str | None = None, draft: str | None = None,
        params: dict[str, Any] | None = None, sampling: SamplingConfig | None = None,
        max_new_tokens: int = 128, chat: bool | None = None, device: str | None = None,
        store: Any | None = None, log: bool = True, source: str = "api", benchmark_id: str | None = None,
        trace: bool = True, on_step: Callable[[Step, Trace], None] | None = None,
        progress: Callable[[str], None] | None = None, cluster: str | None = None,
        backend: str | None = None) -> RunResult:
    """Decode `prompt` with `method` and (by default) log the run to the store.

    prompt: plain text, or a list of chat messages ({"role", "content"}).
    chat: apply the chat template to a text prompt (None: when the model has one).
    store: a store.RunStore; None opens the default one when log=True.
    cluster: decode on a Ray worker (local, auto or ray://HOST:PORT; None: $WORKBENCH_CLUSTER,
    else in process); the run is recorded here all the same (workbench.cluster).
    backend: "eager" (default) or "compiled" (workbench.backend); compiling happens before
    the run's clock starts and is recorded as env["warmup_s"].
    """
    from .backend import check_backend
    from .models import EMBEDDED_DEFAULT, load_model

    # ---- validate cheap things first: nothing is loaded or recorded on bad input
    _check_prompt(prompt)
    if chat is not None and not isinstance(chat, bool):
        raise ConfigError(f"chat must be True, False or None, got {chat!r}")
    cls = get_method(method)
    resolved = resolve_params(method, params)
    sampling = SamplingConfig() if sampling is None else sampling
    if not isinstance(sampling, SamplingConfig):
        raise ConfigError(f"sampling must be a SamplingConfig, not {type(sampling).__name__}")
    decode = DecodeConfig(max_new_tokens=max_new_tokens, trace=trace)
    backend = check_backend(backend)
    if cls.needs_draft_model and not draft:
        raise ConfigError(f"method '{method}' needs a draft model, e.g. --draft smollm2-135m:bf16")
    if not cls.needs_draft_model and draft:
        draft = None  # the method drafts without a model; do not record one it did not use
    target = target or EMBEDDED_DEFAULT
    from .cluster import cluster_address

    address = cluster_address(cluster)
    if address is not None:  # the worker loads, encodes and decodes; this process records the run
        from .cluster import run_on_cluster

        return run_on_cluster(address, method=method, prompt=prompt, target=target, draft=draft, params=resolved,
                              sampling=sampling, max_new_tokens=max_new_tokens, chat=chat, device=device,
                              store=store, log=log, source=source, benchmark_id=benchmark_id, trace=trace,
                              on_step=on_step, progress=progress, drafting_method=method if cls.drafts() else None,
                              backend=backend)

    # ---- models
    tgt = load_model(target, device=device, progress=progress)
    drf = load_model(draft, device=device, progress=progress) if draft else None
    if drf is not None:
        check_draft_vocabulary(method, tgt, drf)
    prompt_ids = tgt.encode_prompt(prompt, chat=chat)
    if not prompt_ids:
        raise ConfigError("the prompt encodes to no tokens")
    for lm in (m for m in (tgt, drf) if m is not None):
        check_fits(lm, len(prompt_ids), max_new_tokens, method if cls.drafts() else None)
    env = {**environment(tgt), **warm_up(backend, [tgt, drf], len(prompt_ids), max_new_tokens, progress)}

    # ---- record and decode
    if log and store is None:
        from store import RunStore

        store = RunStore()
    run_id = None
    tr = Trace(method=method, params=resolved, prompt_ids=list(prompt_ids))
    if log:
        run_id = store.start_run(
            method=method, target=tgt.spec, draft=drf.spec if drf else None,
            prompt=prompt if isinstance(prompt, str) else _chat_text(prompt),
            prompt_json=prompt if isinstance(prompt, list) else None,
            params={**resolved, "max_new_tokens": max_new_tokens, "chat": chat},
            sampling=sampling.to_dict(), env=env, benchmark_id=benchmark_id, source=source,
        )

    write_steps = StepWriter(store if log else None, run_id)

    def _on_step(step: Step, t: Trace) -> None:
        write_steps(t)
        if on_step:
            on_step(step, t)

    try:
        result = generate(tgt, method, prompt_ids, draft=drf, params=resolved, sampling=sampling,
                          decode=decode, on_step=_on_step, trace=tr, backend=backend)
    except BaseException as exc:
        if log:
            close_unfinished(store, run_id, exc, tr, tgt.decode(tr.output_ids))
        raise
    if log:
        store.finish_run(run_id, result.trace, result.text)
    return RunResult(run_id=run_id, method=method, target=tgt.spec, draft=drf.spec if drf else None,
                     prompt=prompt, output_text=result.text, output_ids=result.output_ids, trace=result.trace,
                     result=result)


def warm_up(backend: str, models: list, n_prompt: int, max_new_tokens: int,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Compile what `backend` needs for these models before a run starts -> env entries (backend, warmup_s)."""
    from .backend import prepare
    from .engine import DRAFT_ROOM

    max_len = n_prompt + max_new_tokens + DRAFT_ROOM
    seconds = sum(prepare(backend, lm, max_len, progress=progress) for lm in models if lm is not None)
    return {"backend": backend, "warmup_s": round(seconds, 3)}


def check_draft_vocabulary(method: str | None, target: Any, draft: Any) -> None:
    """Refuse a draft whose vocabulary differs from the target's (check_compatible), unless `method`
    drafts across tokenizers (cross_vocab); the error names the methods that would accept the draft."""
    from .methods import get_method, list_methods
    from .models import IncompatibleModelsError, check_compatible

    if method is not None and get_method(method).any_draft_tokenizer:
        return
    try:
        check_compatible(target, draft)
    except IncompatibleModelsError as exc:
        names = [m.name for m in list_methods() if m.any_draft_tokenizer]
        if not names:
            raise
        raise IncompatibleModelsError(f"{exc}; only {', '.join(names)} drafts across tokenizers") from None


class StepWriter:
    """Writes a run's new steps to the store every STEP_FLUSH_EVERY steps (store None: nothing).

    A failed intermediate write never stops the decode: the steps stay in the trace and
    are written by the next flush or by finish_run / fail_run; it is logged once.
    """

    def __init__(self, store: Any | None, run_id: str | None) -> None:
        self.store, self.run_id = store, run_id
        self.written = 0
        self.failed = False

    def __call__(self, trace: Trace) -> None:
        if self.store is None or len(trace.steps) - self.written < STEP_FLUSH_EVERY:
            return
        try:
            self.store.append_steps(self.run_id, trace.steps[self.written:])
            self.written = len(trace.steps)
        except Exception as exc:  # noqa: BLE001 - any store failure, see the docstring
            if not self.failed:
                logger.warning("run %s: could not write steps to the run store (%s); keeping them in memory "
                               "until the run ends", self.run_id, exc)
            self.failed = True


def describe(exc: BaseException) -> str:
    """An exception as the one line stored with a run."""
    return f"{type(exc).__name__}: {str(exc) or type(exc).__name__}"


def close_unfinished(store: Any, run_id: str, exc: BaseException, trace: Trace | None, output_text: str = "", *,
                     interrupted: bool = False, error: str | None = None) -> None:
    """Record a run that did not finish (failed, or interrupted when its worker died), keeping its steps.

    The caller re-raises the decode's own error: a store that also fails here is logged and
    noted on that error, never raised in its place.
    """
    how = store.interrupt_run if interrupted else store.fail_run
    try:
        how(run_id, error or describe(exc), trace=trace, output_text=output_text)
    except Exception as store_exc:  # noqa: BLE001
        logger.warning("run %s: could not record the run as %s (%s)", run_id,
                       "interrupted" if interrupted else "failed", store_exc)
        if hasattr(exc, "add_note"):  # Python 3.11+
            exc.add_note(f"(recording the run {run_id} in the store also failed: {store_exc})")


def _check_prompt(prompt: Any) -> None:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ConfigError("the prompt is empty")
        return
    if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
        raise ConfigError(f"a prompt must be text or a list of chat messages ({{'role', 'content'}} dicts), "
                          f"not {type(prompt).__name__}")
    if not any(str(m.get("content", "")).strip() for m in prompt):
        raise ConfigError("the prompt is empty")


def check_fits(lm: Any, n_prompt: int, max_new_tokens: int, drafting_method: str | None = None) -> None:
    """Refuse a prompt + max_new_tokens longer than `lm` can attend to, with the numbers.

    Drafts never reach past the token budget (the engine caps their depth), so
    positions stay below n_prompt + max_new_tokens. A drafting method also rolls
    the cache back, which a sliding-window layer allows only while nothing has
    left its window: prompt + new tokens + one draft must stay below window - 1.
    """
    from .cache import sliding_window

    total = n_prompt + max_new_tokens
    limit = lm.max_positions
    if limit is not None and total > limit:
        room = (f"lower max_new_tokens to at most {limit - n_prompt}" if n_prompt < limit
                else "shorten the prompt")
        raise ConfigError(f"the prompt ({n_prompt} tokens) + max_new_tokens ({max_new_tokens}) = {total} tokens is "
                          f"more than '{lm.spec}' can attend to ({limit} positions); {room}")
    window = sliding_window(lm.model.config) if drafting_method else None
    if window is not None and total + SLIDING_WINDOW_MARGIN >= window - 1:
        most = window - 2 - SLIDING_WINDOW_MARGIN - n_prompt
        room = f"lower max_new_tokens to at most {most}" if most >= 1 else "shorten the prompt"
        raise ConfigError(f"'{lm.spec}' has sliding-window attention (window {window}) and '{drafting_method}' "
                          f"rolls its cache back, which needs prompt ({n_prompt}) + max_new_tokens "
                          f"({max_new_tokens}) + {SLIDING_WINDOW_MARGIN} (one draft) below {window - 1}; "
                          f"{room}, or decode with 'autoregressive'")


def _chat_text(messages: list[dict]) -> str:
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages)
