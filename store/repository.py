"""RunStore: record, query, export and delete decoding runs, benchmarks and trainings.

A run's life: ``start_run`` writes a ``running`` row (committed at once, so a
crash still leaves a trace of the attempt), ``append_steps`` streams steps as
they happen, and ``finish_run`` / ``fail_run`` close it with the final trace,
metrics and output. Each call is its own short transaction, so one RunStore can
be shared by several threads (Gradio workers); each call opens its own session.
Write methods wait out another writer's lock (store.retry) and report any
other failure as one StoreError. A run whose process died without closing it
is marked ``interrupted`` the next time a store is opened or runs are listed
(store.liveness). Opening a file brings its schema up to date (store.schema).
Benchmark methods live in store.benchmarks, training methods in store.trainings, advice methods in
store.advice.

Ids are 32-character uuid4 hex strings; ``get_run``, ``load_trace``,
``delete_run``, ``get_benchmark``, ``get_training`` and ``delete_training`` also accept a unique prefix (as shown in
tables, e.g. the first 8 characters).
"""
from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, literal_column, or_, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, selectinload

from workbench.config import BASELINE, SamplingConfig
from workbench.quality import QUALITY_COLUMNS
from workbench.trace import Trace

from . import db, liveness, schema
from .db import StoreError
from .advice import AdviceMixin
from .benchmarks import BenchmarkMixin
from .models import Benchmark, Metric, RunParam, Run, SchemaInfo, StepRow, Training, utcnow
from .records import (METRIC_KEYS, RunRecord, as_dict, param_from_text, param_to_text, record_from_run, row_to_step,
                      step_to_row, summary_rows)
from .retry import RETRY_FOR_S, writes
from .trainings import TrainingMixin

if TYPE_CHECKING:
    import pandas

log = logging.getLogger("store")

_STEP_UPDATE_COLS = [c for c in StepRow.__table__.columns.keys() if c not in ("run_id", "idx")]
_GREEDY_IGNORED = ("seed", "top_k", "top_p")  # irrelevant when temperature == 0 (argmax)
_SAMPLING_DEFAULTS = SamplingConfig().to_dict()  # what a run stored without some setting decoded with


def _norm_sampling(d: dict[str, Any]) -> dict[str, Any]:
    out = {**_SAMPLING_DEFAULTS, **(d or {})}
    return {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in out.items()}


def run_backend(env: dict[str, Any]) -> str:
    """The backend a run decoded on (runs stored before backends existed ran eagerly)."""
    return env.get("backend") or "eager"


def same_sampling(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal sampling settings; for greedy decoding seed, top-k and top-p do not matter."""
    a, b = _norm_sampling(a), _norm_sampling(b)
    if a["temperature"] == 0.0 and b["temperature"] == 0.0:
        a = {k: v for k, v in a.items() if k not in _GREEDY_IGNORED}
        b = {k: v for k, v in b.items() if k not in _GREEDY_IGNORED}
    return a == b


def baseline_criteria(rec: RunRecord) -> dict[str, Any] | None:
    """`find_baselines`' arguments for a run's baseline (None: the run records no max_new_tokens)."""
    max_new = rec.typed_params.get("max_new_tokens")
    if max_new is None:
        return None
    env = {k: rec.env[k] for k in ("device", "dtype") if rec.env.get(k) is not None}
    env["backend"] = run_backend(rec.env)
    return dict(target=rec.target, prompt=rec.prompt, sampling=rec.sampling, max_new_tokens=int(max_new), env=env,
                chat=rec.typed_params.get("chat"), exclude=rec.id)


def is_baseline_of(cand: RunRecord, *, target: str, prompt: str, sampling: dict[str, Any], max_new_tokens: int,
                   env: dict[str, Any] | None = None, chat: bool | None = None, exclude: str | None = None) -> bool:
    """The one baseline rule (see RunStore.find_baseline): whether `cand` is a baseline for these settings."""
    if cand.id == exclude or cand.method != BASELINE or cand.status != "finished":
        return False
    if not cand.lossless:  # plain decoding with a lossy option (a compressed KV cache, ...) is not the target's own
        return False
    if cand.target != str(target) or cand.prompt != prompt:
        return False
    if cand.params.get("max_new_tokens") != param_to_text(int(max_new_tokens)):
        return False
    if not same_sampling(cand.sampling, as_dict(sampling)):
        return False
    if env and any((run_backend(cand.env) if k == "backend" else cand.env.get(k)) != v for k, v in env.items()):
        return False
    return chat is None or cand.typed_params.get("chat") == chat


# What a run's timing depends on besides its settings: two runs repeat one measurement only when these env
# values agree too (workbench.record.environment). MACHINE_KEYS name the machine itself.
MACHINE_KEYS = ("cpu", "gpu", "cpu_count")
REPEAT_ENV_KEYS = MACHINE_KEYS + ("device", "dtype", "quant", "torch_threads", "torch")
REPEAT_SCAN = 2000  # repeat_groups looks at this many of the newest finished runs
# The env values a CSV export carries for each run (as env.<key>), next to its backend.
CSV_ENV_KEYS = ("warmup_s", "device", "dtype", "quant", "cpu", "gpu", "cpu_count", "torch_threads", "torch")


def repeat_key(rec: RunRecord) -> str:
    """What makes two runs repeats of one measurement: the same method, models, prompt, parameters
    (a benchmark's repeat index aside), sampling (seed, top-k, top-p ignored when greedy), backend, and
    REPEAT_ENV_KEYS values of the env. Their tokens/s then differ only by the machine's noise."""
    params = {k: v for k, v in rec.params.items() if k != "bench.repeat"}
    sampling = _norm_sampling(rec.sampling)
    if sampling["temperature"] == 0.0:
        sampling = {k: v for k, v in sampling.items() if k not in _GREEDY_IGNORED}
    env = {k: rec.env.get(k) for k in REPEAT_ENV_KEYS}
    env["backend"] = run_backend(rec.env)
    return json.dumps([rec.method, rec.target, rec.draft, rec.prompt, params, sampling, env], sort_keys=True,
                      default=str)


class RunStore(AdviceMixin, BenchmarkMixin, TrainingMixin):
    """The run history: one SQLite database (file, ``:memory:`` or ``sqlite...`` URL).

    busy_timeout: seconds one statement waits for another writer's lock;
    retry_for: seconds a write method keeps retrying while the file stays locked.
    """

    def __init__(self, path: str | Path | None = None, *, busy_timeout: float = db.BUSY_TIMEOUT_MS / 1000,
                 retry_for: float = RETRY_FOR_S) -> None:
        self.url, self.path = db.resolve_url(path)
        self.retry_for = float(retry_for)
        self._busy_ms = max(0, int(busy_timeout * 1000))
        self._beats: dict[str, float] = {}  # run id -> time.monotonic() of its last heartbeat write
        self.engine = db.make_engine(self.url, self._busy_ms)
        self._sessions = db.make_sessionmaker(self.engine)
        try:
            schema.ensure_schema(self.engine, self.url, self.where, self._busy_ms)
        except StoreError:
            self.engine.dispose()
            raise
        except DatabaseError as e:
            self.engine.dispose()
            raise StoreError(f"cannot open the run store at {self.where}: {e.orig or e}") from e
        self.reap_interrupted()

    @property
    def where(self) -> str:
        """The file (or URL) in messages."""
        return str(self.path) if self.path else (self.url.database or self.url.render_as_string(hide_password=True))

    def __repr__(self) -> str:
        return f"RunStore({self.where!r})"

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session_scope(self) -> Iterator[Session]:
        """A session that commits on success, rolls back on error and always closes."""
        with db.session_scope(self._sessions) as session:
            yield session

    # -- schema and liveness --------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        with self.session_scope() as s:
            return int(s.execute(select(SchemaInfo.version)).scalar_one())

    def reap_interrupted(self) -> int:
        """Mark runs, benchmarks and trainings whose process is gone ``interrupted`` (store.liveness); returns how many.

        Best effort: a read-only or busy file is left as it is (listing still works).
        """
        try:
            with self.session_scope() as s:
                return liveness.reap(s)
        except DatabaseError as e:
            log.debug("could not mark interrupted runs in %s: %s", self.where, e.orig or e)
            return 0

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _resolve(s: Session, model: type[Run] | type[Benchmark] | type[Training], ident: str, what: str) -> str:
        """Exact id, or the one id starting with ``ident``."""
        key = str(ident).strip().lower()
        if not key:
            raise StoreError(f"empty {what} id")
        if s.execute(select(model.id).where(model.id == key)).first() is not None:
            return key
        found = s.scalars(select(model.id).where(model.id.startswith(key, autoescape=True)).limit(2)).all()
        if not found:
            raise StoreError(f"no {what} with id {ident!r}")
        if len(found) > 1:
            raise StoreError(f"{what} id prefix {ident!r} is ambiguous; give more characters")
        return found[0]

    @staticmethod
    def _run(s: Session, run_id: str) -> Run:
        run = s.get(Run, run_id)
        if run is None:
            raise StoreError(f"no run with id {run_id!r}")
        return run

    @staticmethod
    def _upsert_steps(s: Session, run_id: str, steps: Iterable[Any]) -> None:
        rows = [step_to_row(run_id, st) for st in steps]
        if not rows:
            return
        stmt = sqlite_insert(StepRow)
        stmt = stmt.on_conflict_do_update(index_elements=["run_id", "idx"],
                                          set_={c: stmt.excluded[c] for c in _STEP_UPDATE_COLS})
        s.execute(stmt, rows)

    def _write_trace(self, s: Session, run: Run, trace: Trace, *, prune: bool) -> None:
        """Steps (upserted), output ids, prompt ids, trace params, stop reason and metrics."""
        self._upsert_steps(s, run.id, trace.steps)
        if prune:  # the stored steps become exactly the trace's steps
            last = max((st.index for st in trace.steps), default=-1)
            s.execute(delete(StepRow).where(StepRow.run_id == run.id, StepRow.idx > last)
                      .execution_options(synchronize_session=False))
        run.prompt_ids = [int(t) for t in trace.prompt_ids]
        run.output_ids = [int(t) for t in trace.output_ids]
        run.trace_params = json.loads(db.json_dumps(dict(trace.params)))
        run.stop_reason = trace.stop_reason or None
        run.notes = json.loads(db.json_dumps(list(trace.notes))) or None
        run.lossy = [str(x) for x in trace.lossy] or None
        run.lossless = not trace.lossy
        metric_rows, acc = summary_rows(run.id, trace.summary())
        run.acceptance_by_position = acc
        s.execute(delete(Metric).where(Metric.run_id == run.id).execution_options(synchronize_session=False))
        if metric_rows:
            s.execute(sqlite_insert(Metric), metric_rows)

    @staticmethod
    def _records(s: Session, stmt: Any) -> list[RunRecord]:
        stmt = stmt.options(selectinload(Run.params), selectinload(Run.metrics))
        return [record_from_run(r) for r in s.scalars(stmt).unique()]

    # -- runs -----------------------------------------------------------------------------

    @writes
    def start_run(self, *, method: str, target: str, draft: str | None, prompt: str, params: dict[str, Any],
                  sampling: dict[str, Any], env: dict[str, Any], prompt_json: Any = None,
                  benchmark_id: str | None = None, source: str = "api",
                  prompt_ids: Sequence[int] | None = None) -> str:
        """Record a new ``running`` run owned by this process (committed immediately) and return its id."""
        run_id = uuid.uuid4().hex
        owner = liveness.owner_columns()
        with self.session_scope() as s:
            if benchmark_id is not None:  # a benchmark's runs are its heartbeat
                res = s.execute(update(Benchmark).where(Benchmark.id == benchmark_id)
                                .values(heartbeat_at=owner["heartbeat_at"])
                                .execution_options(synchronize_session=False))
                if not res.rowcount:
                    raise StoreError(f"no benchmark with id {benchmark_id!r}")
            run = Run(id=run_id, created_at=utcnow(), status="running", method=method, target=str(target),
                      draft=None if draft is None else str(draft), prompt=prompt or "",
                      prompt_json=prompt_json, prompt_ids=None if prompt_ids is None else [int(t) for t in prompt_ids],
                      sampling=json.loads(db.json_dumps(as_dict(sampling))),
                      env=json.loads(db.json_dumps(as_dict(env))), benchmark_id=benchmark_id, source=source,
                      **owner)
            run.params = [RunParam(key=str(k), value=param_to_text(v)) for k, v in (params or {}).items()]
            s.add(run)
        self._beats[run_id] = time.monotonic()
        return run_id

    @writes
    def append_steps(self, run_id: str, steps: list[Any]) -> None:
        """Write steps of a run in progress; a step already stored (same index) is replaced.

        Also the run's heartbeat (at most every liveness.HEARTBEAT_EVERY_S); a run
        wrongly taken for ``interrupted`` (its owner was only slow) is ``running`` again.
        """
        if not steps:
            return
        now = time.monotonic()
        with self.session_scope() as s:
            status = s.execute(select(Run.status).where(Run.id == run_id)).scalar()
            if status is None:
                raise StoreError(f"no run with id {run_id!r}")
            self._upsert_steps(s, run_id, steps)
            if status == "interrupted":
                s.execute(update(Run).where(Run.id == run_id).values(
                    status="running", error=None, finished_at=None, stop_reason=None, **liveness.owner_columns())
                    .execution_options(synchronize_session=False))
            elif now - self._beats.get(run_id, -math.inf) >= liveness.HEARTBEAT_EVERY_S:
                s.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow())
                          .execution_options(synchronize_session=False))
            else:
                return
        self._beats[run_id] = now

    @writes
    def finish_run(self, run_id: str, trace: Trace, output_text: str,
                   quality: dict[str, Any] | None = None) -> None:
        """Close a run: its final steps, metrics, output, quality (workbench.quality.Quality.to_dict(), None:
        not measured) and status ``finished``."""
        with self.session_scope() as s:
            run = self._run(s, run_id)
            self._write_trace(s, run, trace, prune=True)
            run.quality = json.loads(db.json_dumps(dict(quality))) if quality else None
            run.output_text = output_text
            run.status = "finished"
            run.error = None
            run.finished_at = utcnow()
        self._beats.pop(run_id, None)

    @writes
    def fail_run(self, run_id: str, error: str, trace: Trace | None = None, output_text: str = "") -> None:
        """Mark a run ``failed`` with its error; steps already stored (and any in ``trace``) are kept."""
        stop = trace.stop_reason if trace is not None and trace.stop_reason else "error"
        self._end_unfinished(run_id, "failed", stop, error, trace, output_text)

    @writes
    def interrupt_run(self, run_id: str, error: str, trace: Trace | None = None, output_text: str = "") -> None:
        """Mark a run ``interrupted`` (the process decoding it died, e.g. a cluster worker), like ``fail_run``."""
        self._end_unfinished(run_id, "interrupted", "interrupted", error, trace, output_text)

    def _end_unfinished(self, run_id: str, status: str, stop_reason: str, error: str, trace: Trace | None,
                        output_text: str) -> None:
        """Close a run that did not finish: keep its steps (stored ones, and any in ``trace``) and its error."""
        with self.session_scope() as s:
            run = self._run(s, run_id)
            if trace is not None:
                self._write_trace(s, run, trace, prune=False)
            else:
                committed = s.scalars(select(StepRow.committed).where(StepRow.run_id == run_id)
                                      .order_by(StepRow.idx)).all()
                run.output_ids = [t for c in committed for t in (c or [])]
            run.stop_reason = stop_reason
            run.output_text = output_text or run.output_text or ""
            run.status = status
            run.error = str(error)
            run.finished_at = utcnow()
        self._beats.pop(run_id, None)

    def get_run(self, run_id: str) -> RunRecord:
        with self.session_scope() as s:
            rid = self._resolve(s, Run, run_id, "run")
            return self._records(s, select(Run).where(Run.id == rid))[0]

    def load_trace(self, run_id: str) -> Trace:
        """Rebuild the run's Trace from its steps rows (what finish_run was given, for finished runs)."""
        with self.session_scope() as s:
            rid = self._resolve(s, Run, run_id, "run")
            run = s.scalars(select(Run).where(Run.id == rid)
                            .options(selectinload(Run.params), selectinload(Run.metrics))).one()
            rows = s.scalars(select(StepRow).where(StepRow.run_id == rid).order_by(StepRow.idx)).all()
            metrics = {m.key: m.value for m in run.metrics}
            params = (dict(run.trace_params) if run.trace_params is not None
                      else {p.key: param_from_text(p.value) for p in run.params})
            wall, peak = metrics.get("wall_s"), metrics.get("peak_mem_mb")
            return Trace(method=run.method, params=params, prompt_ids=list(run.prompt_ids or []),
                         steps=[row_to_step(r) for r in rows], wall_s=0.0 if wall is None else wall,
                         peak_mem_mb=math.nan if peak is None else peak, stop_reason=run.stop_reason or "",
                         notes=[dict(n) for n in run.notes or [] if isinstance(n, dict)],
                         lossy=[str(x) for x in run.lossy or []])

    def list_runs(self, *, method: str | Sequence[str] | None = None, status: str | Sequence[str] | None = None,
                  benchmark_id: str | None = None, search: str | None = None, limit: int | None = 200,
                  source: str | Sequence[str] | None = None, ids: Sequence[str] | None = None,
                  lossless: bool | None = None) -> list[RunRecord]:
        """Runs, newest first. ``search`` matches substrings of prompt, target, draft, method (or an id prefix);
        ``ids`` keeps only the runs with these exact ids; ``lossless`` True/False keeps only lossless/lossy runs."""
        self.reap_interrupted()
        stmt = select(Run)
        if lossless is not None:
            stmt = stmt.where(Run.lossless == bool(lossless))
        if ids is not None:
            stmt = stmt.where(Run.id.in_([str(i) for i in ids]))
        for col, value in ((Run.method, method), (Run.status, status), (Run.source, source)):
            if value is not None:
                stmt = stmt.where(col == value if isinstance(value, str) else col.in_(list(value)))
        if benchmark_id is not None:
            stmt = stmt.where(Run.benchmark_id == benchmark_id)
        if search and search.strip():
            term = search.strip()
            stmt = stmt.where(or_(Run.prompt.icontains(term, autoescape=True),
                                  Run.target.icontains(term, autoescape=True),
                                  Run.draft.icontains(term, autoescape=True),
                                  Run.method.icontains(term, autoescape=True),
                                  Run.id.startswith(term.lower(), autoescape=True)))
        stmt = stmt.order_by(Run.created_at.desc(), literal_column("runs.rowid").desc())
        if limit is not None:
            stmt = stmt.limit(int(limit))
        with self.session_scope() as s:
            return self._records(s, stmt)

    @writes
    def delete_run(self, run_id: str) -> None:
        """Delete one run (id or unique prefix) with its params, metrics and steps."""
        with self.session_scope() as s:
            rid = self._resolve(s, Run, run_id, "run")
            s.execute(delete(Run).where(Run.id == rid).execution_options(synchronize_session=False))

    @writes
    def delete_runs(self, run_ids: Iterable[str]) -> int:
        """Delete runs by exact id; unknown ids are skipped. Returns how many were deleted."""
        ids = list(dict.fromkeys(str(r) for r in run_ids))
        n = 0
        with self.session_scope() as s:
            for i in range(0, len(ids), 500):
                res = s.execute(delete(Run).where(Run.id.in_(ids[i:i + 500]))
                                .execution_options(synchronize_session=False))
                n += res.rowcount or 0
        return n

    def baseline_for(self, run: RunRecord | str) -> RunRecord | None:
        """The plain-decoding baseline of a stored run: the newest finished ``autoregressive`` run
        with its target, prompt, chat flag, sampling, max_new_tokens, device/dtype and backend (not itself).

        This is the one baseline policy: the app's speedup cards, the History tab, the Latency tab and
        the notebooks all ask here (or `baselines_of` / `baselines_for`, which apply the same rules).
        """
        found = self.baselines_of(run, limit=1)
        return found[0] if found else None

    def baselines_of(self, run: RunRecord | str, limit: int | None = None) -> list[RunRecord]:
        """Every stored baseline of a run (`baseline_for`'s rules), newest first."""
        rec = self.get_run(run) if isinstance(run, str) else run
        crit = baseline_criteria(rec)
        return [] if crit is None else self.find_baselines(**crit, limit=limit)

    def baselines_for(self, records: Sequence[RunRecord]) -> dict[str, RunRecord | None]:
        """`baseline_for` of many runs in one query (for tables): run id -> its baseline or None."""
        crits = {r.id: baseline_criteria(r) for r in records}
        wanted = [c for c in crits.values() if c is not None]
        out: dict[str, RunRecord | None] = {rid: None for rid in crits}
        if not wanted:
            return out
        targets = sorted({str(c["target"]) for c in wanted})
        prompts = sorted({c["prompt"] for c in wanted})
        stmt = (select(Run).where(Run.method == BASELINE, Run.status == "finished", Run.target.in_(targets),
                                  Run.prompt.in_(prompts))
                .order_by(Run.created_at.desc(), literal_column("runs.rowid").desc()))
        with self.session_scope() as s:
            candidates = self._records(s, stmt)
        for rid, crit in crits.items():
            if crit is not None:
                out[rid] = next((c for c in candidates if is_baseline_of(c, **crit)), None)
        return out

    def find_baseline(self, *, target: str, prompt: str, sampling: dict[str, Any], max_new_tokens: int,
                      env: dict[str, Any] | None = None, chat: bool | None = None,
                      exclude: str | None = None) -> RunRecord | None:
        """Newest finished ``autoregressive`` run with the same target, prompt, sampling and max_new_tokens.

        For greedy sampling the seed, top-k and top-p are ignored (they cannot change
        the output). If ``env`` is given, each of its keys must match the run's env too
        (e.g. ``{"device": "cuda", "dtype": "bfloat16"}``) so timings are comparable.
        ``chat`` (when not None) must equal the run's chat flag: the same text with and
        without the chat template is a different prompt. ``exclude`` skips one run id.
        """
        found = self.find_baselines(target=target, prompt=prompt, sampling=sampling, max_new_tokens=max_new_tokens,
                                    env=env, chat=chat, exclude=exclude, limit=1)
        return found[0] if found else None

    def find_baselines(self, *, target: str, prompt: str, sampling: dict[str, Any], max_new_tokens: int,
                       env: dict[str, Any] | None = None, chat: bool | None = None, exclude: str | None = None,
                       limit: int | None = None) -> list[RunRecord]:
        """Every run `find_baseline` would accept, newest first (at most `limit`)."""
        sampling = as_dict(sampling)
        stmt = (select(Run)
                .join(RunParam, and_(RunParam.run_id == Run.id, RunParam.key == "max_new_tokens"))
                .where(Run.method == BASELINE, Run.status == "finished", Run.target == str(target),
                       Run.prompt == prompt, RunParam.value == param_to_text(int(max_new_tokens)))
                .order_by(Run.created_at.desc(), literal_column("runs.rowid").desc()))
        out: list[RunRecord] = []
        with self.session_scope() as s:
            for rec in self._records(s, stmt):
                if is_baseline_of(rec, target=target, prompt=prompt, sampling=sampling, max_new_tokens=max_new_tokens,
                                  env=env, chat=chat, exclude=exclude):
                    out.append(rec)
                    if limit is not None and len(out) >= limit:
                        break
        return out

    # -- repeats --------------------------------------------------------------------------

    def repeats_of(self, run: RunRecord | str) -> list[RunRecord]:
        """The finished runs that repeat this run's measurement (same `repeat_key`: settings, prompt and
        machine), newest first; the run itself among them when it finished."""
        rec = self.get_run(run) if isinstance(run, str) else run
        key = repeat_key(rec)
        stmt = (select(Run).where(Run.method == rec.method, Run.status == "finished", Run.target == rec.target,
                                  Run.prompt == rec.prompt)
                .order_by(Run.created_at.desc(), literal_column("runs.rowid").desc()))
        with self.session_scope() as s:
            return [r for r in self._records(s, stmt) if repeat_key(r) == key]

    def repeat_groups(self, machine: dict[str, Any] | None = None, limit: int = REPEAT_SCAN) -> list[list[RunRecord]]:
        """Groups of two or more finished runs that repeat one measurement (`repeat_key`), among the newest
        `limit` finished runs; with `machine` (an env), only runs whose env has its MACHINE_KEYS values."""
        want = {k: machine.get(k) for k in MACHINE_KEYS} if machine else None
        groups: dict[str, list[RunRecord]] = {}
        for r in self.list_runs(status="finished", limit=limit):
            if want is not None and any(r.env.get(k) != v for k, v in want.items()):
                continue
            groups.setdefault(repeat_key(r), []).append(r)
        return [g for g in groups.values() if len(g) >= 2]

    # -- tables ---------------------------------------------------------------------------

    def runs_dataframe(self, **filters: Any) -> "pandas.DataFrame":
        """One row per run, with its backend and machine (env.*); ``filters`` are list_runs' (default: no limit)."""
        import pandas as pd  # here: only for tables; `workbench runs list` and the other store reads stay light

        filters.setdefault("limit", None)
        fields = ["id", "created_at", "finished_at", "status", "error", "method", "target", "draft", "prompt",
                  "source", "benchmark_id", "stop_reason", "output_text"]
        base = fields + ["backend"] + [f"env.{k}" for k in CSV_ENV_KEYS]  # the backend and machine of each run
        rows: list[dict[str, Any]] = []
        for r in self.list_runs(**filters):
            row: dict[str, Any] = {k: getattr(r, k) for k in fields}
            row["backend"] = run_backend(r.env)
            row.update({f"env.{k}": r.env.get(k) for k in CSV_ENV_KEYS})
            row.update({f"sampling.{k}": v for k, v in r.sampling.items()})
            row.update({f"param.{k}": v for k, v in r.typed_params.items()})
            row.update(r.metrics)
            row["acceptance_by_position"] = list(r.acceptance_by_position)
            row["lossless"] = r.lossless
            row["lossy"] = "; ".join(r.lossy)
            row.update({f"quality.{k}": (r.quality or {}).get(k) for k in QUALITY_COLUMNS})
            rows.append(row)
        df = pd.DataFrame(rows)
        if df.empty:
            return pd.DataFrame(columns=base + list(METRIC_KEYS) + ["acceptance_by_position", "lossless", "lossy"]
                                + [f"quality.{k}" for k in QUALITY_COLUMNS])
        return df

    def export_csv(self, path: str | Path, **filters: Any) -> int:
        """Write runs_dataframe(**filters) to ``path`` as CSV; returns the number of rows."""
        df = self.runs_dataframe(**filters)
        if len(df):
            df["acceptance_by_position"] = df["acceptance_by_position"].map(json.dumps)
        out = Path(path).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(out, index=False)
        return len(df)
