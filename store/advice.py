"""Advice in the run store: one row per ``workbench advise``, tied to its probe and verification benchmarks.

:class:`AdviceMixin` holds RunStore's advice methods. The advisor starts a row
before it decodes anything, attaches its benchmarks as they start, and closes it
with what it found::

    aid = store.start_advice(target="smollm2-135m", backend="eager", request=req, command=cmd, env=env)
    store.update_advice(aid, probe_benchmark_id=probe_id)          # also the heartbeat
    store.update_advice(aid, verify_benchmark_id=verify_id, result=partial)
    store.finish_advice(aid, result=result)                        # or status="failed", error=...

``update_advice`` is the advice's heartbeat: one left ``running`` by a killed
process becomes ``interrupted`` (store.liveness), keeping what it had written.
JSON is stored strict, as a training's (store.trainings.finite_json): NaN and
infinities become null.
"""
from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import literal_column, select, update

from . import liveness
from .db import StoreError
from .models import RUN_STATUSES, Advice, Benchmark, utcnow
from .retry import writes
from .trainings import finite_json


def advice_dict(a: Advice) -> dict[str, Any]:
    """Every column of an ``advice`` row; times as ISO 8601 strings (UTC), JSON columns as dicts."""
    return {"id": a.id, "created_at": a.created_at.isoformat() if a.created_at else None,
            "finished_at": a.finished_at.isoformat() if a.finished_at else None, "status": a.status,
            "error": a.error, "target": a.target, "backend": a.backend, "request": dict(a.request or {}),
            "result": dict(a.result or {}), "command": a.command, "env": dict(a.env or {}),
            "probe_benchmark_id": a.probe_benchmark_id, "verify_benchmark_id": a.verify_benchmark_id}


def _object(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StoreError(f"advice {name} must be a dict, got {type(value).__name__}")
    return finite_json(value)


class AdviceMixin:
    """Advice methods of RunStore (which provides session_scope, _resolve and reap_interrupted)."""

    def _check_benchmark(self, s, bench_id: str | None) -> None:
        if bench_id is not None and s.get(Benchmark, bench_id) is None:
            raise StoreError(f"no benchmark with id {bench_id!r}")

    @writes
    def start_advice(self, *, target: str, backend: str, request: dict[str, Any], command: str,
                     env: dict[str, Any]) -> str:
        """Record a new ``running`` advice owned by this process and return its id."""
        if not str(target or "").strip():
            raise StoreError("an advice needs a target model spec")
        advice_id = uuid.uuid4().hex
        with self.session_scope() as s:
            s.add(Advice(id=advice_id, created_at=utcnow(), status="running", target=str(target),
                         backend=str(backend), request=_object("request", request), command=str(command or ""),
                         env=_object("env", env or {}), **liveness.owner_columns()))
        return advice_id

    @writes
    def update_advice(self, advice_id: str, *, probe_benchmark_id: str | None = None,
                      verify_benchmark_id: str | None = None, result: dict[str, Any] | None = None) -> None:
        """Attach a benchmark or replace the result (None leaves a field as it is); writes the heartbeat.

        An advice marked ``interrupted`` while its owner was only slow is ``running`` again."""
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if result is not None:
            values["result"] = _object("result", result)
        with self.session_scope() as s:
            for name, bench_id in (("probe_benchmark_id", probe_benchmark_id),
                                   ("verify_benchmark_id", verify_benchmark_id)):
                if bench_id is not None:
                    self._check_benchmark(s, bench_id)
                    values[name] = bench_id
            status = s.execute(select(Advice.status).where(Advice.id == advice_id)).scalar()
            if status is None:
                raise StoreError(f"no advice with id {advice_id!r}")
            if status == "interrupted":
                values.update(status="running", error=None, finished_at=None, **liveness.owner_columns())
            s.execute(update(Advice).where(Advice.id == advice_id).values(**values)
                      .execution_options(synchronize_session=False))

    @writes
    def finish_advice(self, advice_id: str, status: str = "finished", error: str | None = None, *,
                      result: dict[str, Any] | None = None) -> None:
        """Close an advice (``finished``, ``failed`` or ``interrupted``), with its result."""
        if status not in RUN_STATUSES:
            raise StoreError(f"advice status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        values: dict[str, Any] = {"status": status, "error": None if error is None else str(error),
                                  "finished_at": None if status == "running" else utcnow(), "heartbeat_at": utcnow()}
        if result is not None:
            values["result"] = _object("result", result)
        with self.session_scope() as s:
            res = s.execute(update(Advice).where(Advice.id == advice_id).values(**values)
                            .execution_options(synchronize_session=False))
            if not res.rowcount:
                raise StoreError(f"no advice with id {advice_id!r}")

    def list_advice(self, target: str | None = None) -> list[dict[str, Any]]:
        """Every advice (see advice_dict), newest first; filtered by exact target spec."""
        self.reap_interrupted()
        stmt = select(Advice)
        if target is not None:
            stmt = stmt.where(Advice.target == str(target))
        stmt = stmt.order_by(Advice.created_at.desc(), literal_column("advice.rowid").desc())
        with self.session_scope() as s:
            return [advice_dict(a) for a in s.scalars(stmt)]

    def get_advice(self, advice_id: str) -> dict[str, Any]:
        """One advice by id or unique prefix (see advice_dict)."""
        with self.session_scope() as s:
            aid = self._resolve(s, Advice, advice_id, "advice")
            row = s.get(Advice, aid)
            assert row is not None
            return advice_dict(row)
