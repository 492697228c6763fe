"""Benchmarks in the run store: one row per benchmark sweep, grouping its runs.

:class:`BenchmarkMixin` holds RunStore's benchmark methods. A ``running``
benchmark names its owner like a run does; each run it starts is its
heartbeat, so one left behind by a killed process becomes ``interrupted``
(store.liveness) like its runs.
"""
from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import func, literal_column, select, update
from sqlalchemy.orm import Session

from . import db, liveness
from .db import StoreError
from .models import RUN_STATUSES, Benchmark, Run, utcnow
from .records import as_dict, benchmark_dict
from .retry import writes


class BenchmarkMixin:
    """Benchmark methods of RunStore (which provides session_scope, _resolve and reap_interrupted)."""

    @writes
    def start_benchmark(self, *, suite: str, config: dict[str, Any], env: dict[str, Any]) -> str:
        """Record a new ``running`` benchmark owned by this process and return its id."""
        bench_id = uuid.uuid4().hex
        with self.session_scope() as s:
            s.add(Benchmark(id=bench_id, created_at=utcnow(), suite=suite, status="running",
                            config=json.loads(db.json_dumps(as_dict(config))),
                            env=json.loads(db.json_dumps(as_dict(env))), **liveness.owner_columns()))
        return bench_id

    @writes
    def finish_benchmark(self, bench_id: str, status: str = "finished", error: str | None = None) -> None:
        if status not in RUN_STATUSES:
            raise StoreError(f"benchmark status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        with self.session_scope() as s:
            res = s.execute(update(Benchmark).where(Benchmark.id == bench_id)
                            .values(status=status, error=error,
                                    finished_at=None if status == "running" else utcnow())
                            .execution_options(synchronize_session=False))
            if not res.rowcount:
                raise StoreError(f"no benchmark with id {bench_id!r}")

    def _run_counts(self, s: Session, bench_ids: list[str]) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {b: {} for b in bench_ids}
        stmt = (select(Run.benchmark_id, Run.status, func.count())
                .where(Run.benchmark_id.in_(bench_ids)).group_by(Run.benchmark_id, Run.status))
        for bid, status, n in s.execute(stmt):
            counts[bid][status] = n
        return counts

    def list_benchmarks(self) -> list[dict[str, Any]]:
        """Benchmarks, newest first, with run counts (n_runs, n_finished, n_failed, n_interrupted)."""
        self.reap_interrupted()
        with self.session_scope() as s:
            benches = s.scalars(select(Benchmark).order_by(Benchmark.created_at.desc(),
                                                           literal_column("benchmarks.rowid").desc())).all()
            counts = self._run_counts(s, [b.id for b in benches]) if benches else {}
            return [benchmark_dict(b, counts.get(b.id)) for b in benches]

    def get_benchmark(self, bench_id: str) -> dict[str, Any]:
        """One benchmark (id or unique prefix) with its run counts and ``run_ids`` (oldest first)."""
        with self.session_scope() as s:
            bid = self._resolve(s, Benchmark, bench_id, "benchmark")
            bench = s.get(Benchmark, bid)
            assert bench is not None
            d = benchmark_dict(bench, self._run_counts(s, [bid])[bid])
            d["run_ids"] = list(s.scalars(select(Run.id).where(Run.benchmark_id == bid)
                                          .order_by(Run.created_at, literal_column("runs.rowid"))))
            return d
