"""A run's recording, one piece for every way a run runs: in process, on a cluster worker, in a benchmark.

    with Recording(store, trace, method=..., target=..., draft=..., prompt=..., params=..., sampling=...,
                   env=..., source="api", decode_text=target.decode) as rec:
        result = generate(..., trace=trace, on_step=rec.on_step)
        rec.finish(result.trace, result.text)

The lifecycle: `Recording(...)` writes the run ``running`` (store.start_run); `on_step` appends the
trace's new steps every STEP_FLUSH_EVERY steps; `finish` closes it ``finished`` with the whole trace;
leaving the block by an exception closes it ``failed`` with that error and the steps decoded so far
(`fail(..., interrupted=True)` first when a cluster worker died mid-run). A store that fails while
closing is logged and noted on the decode's own error, never raised in its place. With `store` None
(a caller that asked not to log) every call does nothing, so callers have one code path.

Also here: what a run's env records about the machine (`environment`), the stored prompt text of chat
messages (`prompt_text`), the one line stored for an error (`error_line`), the run history a drafter may
read (`run_history`), and `RunResult`, what a recorded run gives back.
"""
from __future__ import annotations

import logging
import os
import platform
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
import transformers

from store import RunStore

from .device import cpu_isa, cpu_name
from .accounting import BaselineOutput
from .engine import GenerationResult
from .kernels import plan_for
from .models.loading import gqa_attention_in_effect
from .quality import Quality
from .trace import Step, Trace

logger = logging.getLogger(__name__)

# Steps are written to the store in batches of this many (and at the end).
STEP_FLUSH_EVERY = 16
# stored_baseline looks at this many of the newest candidate baselines (the same text with and without the chat
# template is two prompts: their ids tell them apart).
QUALITY_BASELINE_SCAN = 8


def environment(target=None) -> dict[str, Any]:
    """What a result depends on besides the code: hardware, versions, precision, threads."""
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
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
        env.update(device=str(target.device), dtype=str(target.dtype).replace("torch.", ""), quant=target.quant,
                   kernels=plan_for(target).label())  # the CPU linear kernels its forwards run (workbench.kernels)
    return env


def prompt_text(prompt: str | list[dict]) -> str:
    """The text stored (and searched) for a prompt: itself, or chat messages as 'role: content' lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)


def error_line(exc: BaseException) -> str:
    """An exception as the one line stored with a run."""
    return f"{type(exc).__name__}: {str(exc) or type(exc).__name__}"


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


class Recording:
    """One run's row in the store from start to end (see the module docstring).

    trace: the Trace the decode fills in place (its steps are what a failed run keeps).
    decode_text: token ids -> text, for the output of a run that fails part way (None: no text).
    row: store.start_run's fields; `prompt` is text or chat messages (stored as text and as JSON).
    """

    def __init__(self, store: Any | None, trace: Trace, *, prompt: str | list[dict],
                 decode_text: Callable[[list[int]], str] | None = None, **row: Any) -> None:
        self.store, self.trace, self.decode_text = store, trace, decode_text
        self.run_id: str | None = None
        if store is not None:
            self.run_id = store.start_run(prompt=prompt_text(prompt),
                                          prompt_json=prompt if isinstance(prompt, list) else None, **row)
        self.closed = store is None  # nothing to close without a store
        self._steps = StepWriter(store, self.run_id)

    def __enter__(self) -> "Recording":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is not None and not self.closed:
            self.fail(exc)
        return False  # the decode's own error goes on

    def on_step(self, step: Step, trace: Trace) -> None:
        """The engine's step callback: write the new steps every STEP_FLUSH_EVERY."""
        self._steps(trace)

    def finish(self, trace: Trace, output_text: str, quality: Quality | None = None) -> None:
        """Close the run ``finished`` with its whole trace, output and quality (workbench.quality; None: not
        measured)."""
        if not self.closed:
            self.store.finish_run(self.run_id, trace, output_text,
                                  quality=quality.to_dict() if quality is not None else None)
            self.closed = True

    def fail(self, exc: BaseException, output_text: str | None = None, *, interrupted: bool = False,
             error: str | None = None) -> None:
        """Close the run ``failed`` (or ``interrupted``: its worker died) with the steps decoded so far.

        output_text None: decoded from the trace's output with `decode_text`. error: the stored line
        (default: error_line(exc)). A store failing here is logged and noted on `exc`, never raised.
        """
        if self.closed:
            return
        self.closed = True
        if output_text is None:
            output_text = self.decode_text(self.trace.output_ids) if self.decode_text is not None else ""
        how = self.store.interrupt_run if interrupted else self.store.fail_run
        try:
            how(self.run_id, error or error_line(exc), trace=self.trace, output_text=output_text)
        except Exception as store_exc:  # noqa: BLE001
            logger.warning("run %s: could not record the run as %s (%s)", self.run_id,
                           "interrupted" if interrupted else "failed", store_exc)
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(f"(recording the run {self.run_id} in the store also failed: {store_exc})")


def run_history(store: Any | None = None) -> Callable[[str, int], tuple[tuple, list[list[int]]]]:
    """A drafter's view of earlier runs (DrafterEnv.history): (target spec, n) -> (a key naming what was
    read, the output ids of the newest n finished runs of that target, oldest first). `store` None opens
    the default run store at each call (and closes it)."""

    def history(spec: str, n: int) -> tuple[tuple, list[list[int]]]:
        source = store if store is not None else RunStore()
        try:
            runs, where = source.list_runs(status="finished", search=spec, limit=n), source.where
        finally:
            if source is not store:
                source.close()
        runs = [r for r in runs if r.target == spec and r.output_ids]
        return ("history", where, spec, tuple(r.id for r in runs)), [list(r.output_ids) for r in runs[::-1]]

    return history


def stored_baseline(store: Any | None, *, target: str, prompt: str, prompt_ids: list[int],
                    sampling: dict[str, Any], max_new_tokens: int, env: dict[str, Any]) -> BaselineOutput | None:
    """The newest stored plain-decoding run of this target, prompt (the same token ids), sampling settings and
    token budget on the same device and dtype (any backend), preferring one whose NLL is stored: what a run's
    quality is measured against (workbench.accounting). None when there is none, or no store."""
    if store is None:
        return None
    where = {k: env[k] for k in ("device", "dtype") if env.get(k) is not None}
    found = [BaselineOutput(list(rec.output_ids), rec.output_text or "", (rec.quality or {}).get("nll"), rec.id)
             for rec in store.find_baselines(target=target, prompt=prompt, sampling=sampling,
                                             max_new_tokens=max_new_tokens, env=where, limit=QUALITY_BASELINE_SCAN)
             if rec.output_ids is not None and store.load_trace(rec.id).prompt_ids == list(prompt_ids)]
    # the newest whose NLL is known (no forward to score it again), else the newest
    return next((b for b in found if b.nll is not None), found[0] if found else None)


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
    quality: Quality | None = None  # against the target's plain decoding (workbench.quality); None: not measured

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
                "node_acceptance_rate": _none_if_nan(s.node_acceptance_rate),
                "accepted_draft_tokens": s.accepted_draft_tokens,
                "path_positions": s.path_positions,
                "drafted_tokens": s.drafted_tokens,
                "target_forward_passes": s.target_forward_passes,
                "new_tokens": s.new_tokens,
                "wall_s": s.wall_s,
                "ttft_s": s.ttft_s,
                "peak_mem_mb": _none_if_nan(s.peak_mem_mb),
            },
            "stop_reason": self.trace.stop_reason,
            "notes": [dict(n) for n in self.trace.notes],
            "lossless": self.trace.lossless,
            "lossy": list(self.trace.lossy),
            "quality": self.quality.to_dict() if self.quality is not None else None,
        }


def _none_if_nan(x: float) -> float | None:
    return None if x != x else x
