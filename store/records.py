"""Plain-data views of stored rows, and conversions between Step/Trace and rows.

``RunRecord`` is what the UI, the CLI and notebooks get back: no ORM object
escapes a session. Parameter values are stored as text (like MLflow's params);
strings are kept as they are and every other value is JSON-encoded, so
``param_from_text`` recovers ints, floats and bools.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workbench.trace import Step, Summary

from .db import nan_to_none
from .models import Benchmark, Run, StepRow, Training

# The scalar Summary fields stored in the metrics table (the per-position
# acceptance list goes to runs.acceptance_by_position instead).
METRIC_KEYS: tuple[str, ...] = tuple(
    name for name, f in Summary.__dataclass_fields__.items() if name != "acceptance_by_position")


@dataclass
class RunRecord:
    id: str
    created_at: datetime
    finished_at: datetime | None
    status: str
    error: str | None
    method: str
    target: str
    draft: str | None
    prompt: str
    prompt_json: Any | None
    output_text: str | None
    output_ids: list[int] | None
    sampling: dict[str, Any]
    env: dict[str, Any]
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    acceptance_by_position: list[float | None] = field(default_factory=list)
    benchmark_id: str | None = None
    source: str = "api"
    stop_reason: str | None = None
    notes: list[dict[str, Any]] = field(default_factory=list)  # what the run says about itself (Trace.notes)
    lossless: bool = True  # its method and every option it ran with are lossless (Trace.lossless)
    lossy: list[str] = field(default_factory=list)  # what made it lossy, one line each (Trace.lossy)
    quality: dict[str, Any] | None = None  # workbench.quality.Quality.to_dict(); None: not measured

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def typed_params(self) -> dict[str, Any]:
        """``params`` with ints, floats and bools decoded."""
        return {k: param_from_text(v) for k, v in self.params.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (datetimes as ISO 8601 strings, NaN as None)."""
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "status": self.status,
            "error": self.error,
            "method": self.method,
            "target": self.target,
            "draft": self.draft,
            "prompt": self.prompt,
            "prompt_json": self.prompt_json,
            "output_text": self.output_text,
            "output_ids": list(self.output_ids) if self.output_ids is not None else None,
            "sampling": dict(self.sampling),
            "env": dict(self.env),
            "params": dict(self.params),
            "metrics": {k: nan_to_none(v) for k, v in self.metrics.items()},
            "acceptance_by_position": [nan_to_none(v) for v in self.acceptance_by_position],
            "benchmark_id": self.benchmark_id,
            "source": self.source,
            "stop_reason": self.stop_reason,
            "notes": [dict(n) for n in self.notes],
            "lossless": self.lossless,
            "lossy": list(self.lossy),
            "quality": None if self.quality is None else dict(self.quality),
        }


def as_dict(obj: Any) -> dict[str, Any]:
    """A dict from None, a mapping or an object with ``to_dict()`` (SamplingConfig, ...)."""
    if obj is None:
        return {}
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    return dict(obj)


def param_to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


def param_from_text(text: str) -> Any:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return text
    return value if isinstance(value, (bool, int, float)) or value is None else text


def record_from_run(run: Run) -> RunRecord:
    """Build a RunRecord from a Run whose params and metrics are loaded."""
    return RunRecord(
        id=run.id,
        created_at=run.created_at,
        finished_at=run.finished_at,
        status=run.status,
        error=run.error,
        method=run.method,
        target=run.target,
        draft=run.draft,
        prompt=run.prompt,
        prompt_json=run.prompt_json,
        output_text=run.output_text,
        output_ids=run.output_ids,
        sampling=dict(run.sampling or {}),
        env=dict(run.env or {}),
        params={p.key: p.value for p in run.params},
        metrics={m.key: m.value for m in run.metrics},
        acceptance_by_position=list(run.acceptance_by_position or []),
        benchmark_id=run.benchmark_id,
        source=run.source,
        stop_reason=run.stop_reason,
        notes=[dict(n) for n in run.notes or [] if isinstance(n, dict)],
        lossless=bool(run.lossless) and not run.lossy,
        lossy=[str(x) for x in run.lossy or []],
        quality=dict(run.quality) if isinstance(run.quality, dict) else None,
    )


def benchmark_dict(b: Benchmark, run_counts: dict[str, int] | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": b.id,
        "created_at": b.created_at.isoformat() if b.created_at else None,
        "finished_at": b.finished_at.isoformat() if b.finished_at else None,
        "suite": b.suite,
        "config": dict(b.config or {}),
        "env": dict(b.env or {}),
        "status": b.status,
        "error": b.error,
    }
    counts = run_counts or {}
    d["n_runs"] = sum(counts.values())
    d["n_finished"] = counts.get("finished", 0)
    d["n_failed"] = counts.get("failed", 0)
    d["n_interrupted"] = counts.get("interrupted", 0)
    return d


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


TRAINING_JSON = ("config", "data", "curves", "accuracy", "timings", "env")  # always dicts ({} until written)


def training_dict(t: Training) -> dict[str, Any]:
    """Every column of a ``trainings`` row; times as ISO 8601 strings (UTC), JSON columns as dicts."""
    d: dict[str, Any] = {
        "id": t.id,
        "created_at": _iso(t.created_at),
        "finished_at": _iso(t.finished_at),
        "status": t.status,
        "error": t.error,
        "kind": t.kind,
        "target": t.target,
        "out_dir": t.out_dir,
    }
    d.update({k: dict(getattr(t, k) or {}) for k in TRAINING_JSON})
    d.update(owner_pid=t.owner_pid, owner_host=t.owner_host, owner_started=t.owner_started,
             heartbeat_at=_iso(t.heartbeat_at))
    return d


def _floats(values: list[Any]) -> list[Any]:
    return [nan_to_none(v) if isinstance(v, float) else v for v in values]


def step_to_row(run_id: str, step: Step) -> dict[str, Any]:
    """Column values of a ``steps`` row (keys are StepRow attribute names)."""
    return {
        "run_id": run_id,
        "idx": int(step.index),
        "kind": step.kind,
        "tokens": [int(t) for t in step.tokens],
        "parents": [int(x) for x in step.parents],
        "q": _floats(list(step.q)),
        "p": _floats(list(step.p)),
        "accepted": [int(x) for x in step.accepted],
        "committed": [int(t) for t in step.committed],
        "bonus_token": int(step.bonus_token),
        "bonus_p": nan_to_none(float(step.bonus_p)),
        "draft_s": float(step.draft_s),
        "verify_s": float(step.verify_s),
        "total_s": float(step.total_s),
        "t_end": float(step.t_end),
        "draft_forwards": int(step.draft_forwards),
    }


def row_to_step(row: StepRow) -> Step:
    return Step(
        index=row.idx,
        kind=row.kind,
        tokens=list(row.tokens or []),
        parents=list(row.parents or []),
        q=list(row.q or []),
        p=[float("nan") if v is None else v for v in (row.p or [])],
        accepted=list(row.accepted or []),
        bonus_token=row.bonus_token,
        bonus_p=float("nan") if row.bonus_p is None else row.bonus_p,
        committed=list(row.committed or []),
        draft_s=row.draft_s,
        verify_s=row.verify_s,
        total_s=row.total_s,
        t_end=row.t_end,
        draft_forwards=row.draft_forwards or 0,
    )


def summary_rows(run_id: str, summary: Summary) -> tuple[list[dict[str, Any]], list[float | None]]:
    """(metrics rows, acceptance_by_position) from a Summary; NaN becomes None."""
    d = summary.to_dict()
    rows = []
    for key, value in d.items():
        if isinstance(value, (list, tuple, dict)):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) and value is not None:
            continue
        rows.append({"run_id": run_id, "key": key, "value": None if value is None else float(value)})
    acc = [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
           for v in summary.acceptance_by_position]
    return rows, acc
