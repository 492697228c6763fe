"""Runs, benchmarks, trainings and advice left ``running`` by a process that died: mark them ``interrupted``.

A process killed mid-decode (SIGKILL, out of memory, a closed laptop) never
calls ``finish_run`` or ``fail_run``. So a ``running`` row names its owner (pid,
host name, the process's start time) and carries a heartbeat, written with its
steps at most every :data:`HEARTBEAT_EVERY_S` (a training's with each of its
updates). Whenever a RunStore opens, lists runs, benchmarks, trainings or advice, each
``running`` row is checked:

- owner on this host: gone if no process has that pid, it is a zombie, or the
  pid now belongs to a process started at another time (pid reuse);
- owner on another host (or no owner recorded, as in version-1 files): gone if
  its last heartbeat (else its creation) is older than :data:`STALE_AFTER_S`.

A gone run becomes ``interrupted`` with an error saying why; its stored steps
are kept, and its output ids and metrics are rebuilt from them, so its partial
trace can be viewed like any other; a gone training keeps the curves it had
written. If the owner was only slow and writes again, ``append_steps`` /
``finish_run`` (``update_training`` / ``finish_training``) put the row back in
its true state.
"""
from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psutil
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from workbench.trace import Trace

from .models import Advice, Benchmark, Metric, Run, StepRow, Training, utcnow
from .records import param_from_text, row_to_step, summary_rows

HEARTBEAT_EVERY_S = 30.0  # a run's heartbeat is written with its steps at most this often
STALE_AFTER_S = 600.0  # no heartbeat for this long from another host: the owner is taken to be gone
_START_TOLERANCE_S = 1.0  # process start times are read from /proc in clock ticks


@dataclass(frozen=True)
class Owner:
    pid: int
    host: str
    started: float | None  # process start time, epoch seconds (psutil.Process.create_time)


_me: Owner | None = None


def this_process() -> Owner:
    """The current process as an owner (recomputed after a fork)."""
    global _me
    if _me is None or _me.pid != os.getpid():
        try:
            started: float | None = psutil.Process().create_time()
        except psutil.Error:
            started = None
        _me = Owner(pid=os.getpid(), host=socket.gethostname(), started=started)
    return _me


def owner_columns() -> dict[str, Any]:
    """Owner and first heartbeat of a row this process starts."""
    me = this_process()
    return {"owner_pid": me.pid, "owner_host": me.host, "owner_started": me.started, "heartbeat_at": utcnow()}


def gone_reason(pid: int | None, host: str | None, started: float | None, last_seen: datetime,
                now: datetime) -> str | None:
    """Why the owner of a ``running`` row is gone, or None if it may still be at work."""
    who = f"pid {pid} on {host}"
    if pid is not None and host == this_process().host:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return f"its process ({who}) was killed or exited without closing it"
            if started is not None and abs(proc.create_time() - started) > _START_TOLERANCE_S:
                return f"its process ({who}) is gone (the pid now belongs to another process)"
        except psutil.NoSuchProcess:
            return f"its process ({who}) was killed or exited without closing it"
        except psutil.AccessDenied:
            return None  # someone else's live process
        return None
    if (now - last_seen).total_seconds() <= STALE_AFTER_S:
        return None
    since = f"{last_seen:%Y-%m-%d %H:%M:%S} UTC (more than {STALE_AFTER_S / 60:.0f} min)"
    if pid is None:
        return f"left running since {since} by a workbench that did not record its process"
    return f"no heartbeat from {who} since {since}"


def _partial_trace(s: Session, run: Run) -> Trace:
    rows = s.scalars(select(StepRow).where(StepRow.run_id == run.id).order_by(StepRow.idx)).all()
    steps = [row_to_step(r) for r in rows]
    params = dict(run.trace_params) if run.trace_params is not None else {
        p.key: param_from_text(p.value) for p in run.params}
    return Trace(method=run.method, params=params, prompt_ids=list(run.prompt_ids or []), steps=steps,
                 wall_s=steps[-1].t_end if steps else 0.0, peak_mem_mb=math.nan, stop_reason="interrupted")


def _interrupt_run(s: Session, run: Run, reason: str, now: datetime) -> bool:
    trace = _partial_trace(s, run)
    n = len(trace.steps)
    metric_rows, acc = summary_rows(run.id, trace.summary()) if n else ([], None)
    res = s.execute(update(Run).where(Run.id == run.id, Run.status == "running").values(
        status="interrupted", finished_at=now, stop_reason="interrupted",
        error=f"interrupted: {reason}; {n} step{'s' * (n != 1)} kept",
        output_ids=[int(t) for t in trace.output_ids], acceptance_by_position=acc,
    ).execution_options(synchronize_session=False))
    if not res.rowcount:
        return False  # closed by its owner meanwhile
    s.execute(delete(Metric).where(Metric.run_id == run.id).execution_options(synchronize_session=False))
    if metric_rows:
        s.execute(insert(Metric), metric_rows)
    return True


def reap(s: Session, now: datetime | None = None) -> int:
    """Mark ``running`` runs, benchmarks, trainings and advice whose owner is gone ``interrupted``; returns how many.

    Only reads unless something is found, so it is cheap to call often.
    """
    now = now or utcnow()
    n = 0
    for run in s.scalars(select(Run).where(Run.status == "running")).all():
        reason = gone_reason(run.owner_pid, run.owner_host, run.owner_started,
                             run.heartbeat_at or run.created_at, now)
        if reason is not None and _interrupt_run(s, run, reason, now):
            n += 1
    for model in (Benchmark, Training, Advice):  # rows with nothing to rebuild: only the status changes
        cols = (model.id, model.owner_pid, model.owner_host, model.owner_started, model.heartbeat_at,
                model.created_at)  # not a training's curves, not an advice's result
        for row in s.execute(select(*cols).where(model.status == "running")).all():
            reason = gone_reason(row.owner_pid, row.owner_host, row.owner_started,
                                 row.heartbeat_at or row.created_at, now)
            if reason is not None:
                res = s.execute(update(model).where(model.id == row.id, model.status == "running")
                                .values(status="interrupted", finished_at=now, error=f"interrupted: {reason}")
                                .execution_options(synchronize_session=False))
                n += res.rowcount or 0
    return n
