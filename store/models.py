"""ORM tables of the run store.

Laid out like MLflow's tracking store: a ``runs`` table with a checked
``status``, and ``params`` / ``metrics`` tables keyed by ``(run_id, key)``.
Per-step traces are typed ``steps`` rows (one per target forward pass), so a
run's trace can be rebuilt exactly and queried without parsing blobs.
``benchmarks`` groups the runs of one benchmark sweep; ``trainings`` records one
self-distillation training each (``workbench train``: its settings, data sizes,
loss curves and held-out accuracy, as JSON); ``advice`` one ``workbench advise``
each (what was asked, what it found, its probe and verification benchmarks); ``schema_info`` records
the schema version of the file (kept in step with Alembic's ``alembic_version``,
see :mod:`store.schema`).

A ``running`` run, benchmark, training or advice names its owner (pid, host, process start time)
and carries a heartbeat, so that one left behind by a killed process can be
told apart from one still in progress and marked ``interrupted``
(:mod:`store.liveness`).

Every child table references ``runs.id`` with ``ON DELETE CASCADE`` (the
connection enables ``PRAGMA foreign_keys``), so deleting a run leaves no
orphans. Times are stored as naive UTC and read back as aware UTC datetimes.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (JSON, Boolean, CheckConstraint, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text,
                        TypeDecorator, text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


# Version N is Alembic revision "000N" (store/migrations/versions/000N_*.py).
SCHEMA_VERSION = 7
SCHEMA_REVISION = f"{SCHEMA_VERSION:04d}"
RUN_STATUSES = ("running", "finished", "failed", "interrupted")
_STATUS_CHECK = "status IN ('running', 'finished', 'failed', 'interrupted')"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """DATETIME stored as naive UTC, returned timezone-aware (UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=timezone.utc) if value is not None else None


def _json() -> JSON:
    # none_as_null: Python None is stored as SQL NULL, not the JSON text 'null'.
    return JSON(none_as_null=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


class Owned:
    """Who is writing a row while it is ``running``: pid, host name, process start time (epoch s), and its last
    sign of life (store.liveness closes a row whose owner is gone). Runs, benchmarks, trainings and advice."""

    owner_pid: Mapped[int | None] = mapped_column(Integer)
    owner_host: Mapped[str | None] = mapped_column(String(255))
    owner_started: Mapped[float | None] = mapped_column(Float)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SchemaInfo(Base):
    """A single row: the schema version this database file was created with."""

    __tablename__ = "schema_info"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class Benchmark(Owned, Base):
    __tablename__ = "benchmarks"
    __table_args__ = (CheckConstraint(_STATUS_CHECK, name="status"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    suite: Mapped[str] = mapped_column(String(200), nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(_json(), nullable=False, default=dict)
    env: Mapped[dict[str, Any]] = mapped_column(_json(), nullable=False, default=dict)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="running")
    error: Mapped[str | None] = mapped_column(Text)


class Run(Owned, Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_STATUS_CHECK, name="status"),
        Index("ix_runs_created_at", "created_at"),
        Index("ix_runs_method_status", "method", "status"),
        Index("ix_runs_status", "status"),
        Index("ix_runs_target", "target"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="running")
    error: Mapped[str | None] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(100), nullable=False)
    target: Mapped[str] = mapped_column(Text, nullable=False)  # model spec
    draft: Mapped[str | None] = mapped_column(Text)  # draft model spec, if any
    prompt: Mapped[str] = mapped_column(Text, nullable=False, default="")
    prompt_json: Mapped[Any | None] = mapped_column(_json())  # chat messages, if the prompt was a chat
    prompt_ids: Mapped[list[int] | None] = mapped_column(_json())
    output_text: Mapped[str | None] = mapped_column(Text)
    output_ids: Mapped[list[int] | None] = mapped_column(_json())
    sampling: Mapped[dict[str, Any]] = mapped_column(_json(), nullable=False, default=dict)
    env: Mapped[dict[str, Any]] = mapped_column(_json(), nullable=False, default=dict)
    trace_params: Mapped[dict[str, Any] | None] = mapped_column(_json())  # Trace.params, typed
    acceptance_by_position: Mapped[list[float | None] | None] = mapped_column(_json())
    benchmark_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("benchmarks.id", ondelete="SET NULL"), index=True)
    source: Mapped[str] = mapped_column(String(32), nullable=False, default="api")
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    # What the run says about itself (Trace.notes: [{"kind", "text", ...}]; version 5); NULL: none
    notes: Mapped[list[dict[str, Any]] | None] = mapped_column(_json())
    # Whether the run was lossless (its method and every option; version 6), what made it lossy (Trace.lossy,
    # NULL: nothing), and its quality against its baseline (workbench.quality.Quality.to_dict(); NULL: not measured)
    lossless: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True, server_default=text("1"))
    lossy: Mapped[list[str] | None] = mapped_column(_json())
    quality: Mapped[dict[str, Any] | None] = mapped_column(_json())

    params: Mapped[list[RunParam]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="RunParam.key")
    metrics: Mapped[list[Metric]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="Metric.key")
    steps: Mapped[list[StepRow]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="StepRow.idx",
        lazy="raise_on_sql")


class RunParam(Base):
    """A method parameter (or max_new_tokens) as text; the primary key makes (run_id, key) unique."""

    __tablename__ = "params"

    run_id: Mapped[str] = mapped_column(String(32), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)

    run: Mapped[Run] = relationship(back_populates="params")


class Metric(Base):
    """A scalar Summary field; NULL stands for NaN (e.g. acceptance_rate with nothing drafted)."""

    __tablename__ = "metrics"

    run_id: Mapped[str] = mapped_column(String(32), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)

    run: Mapped[Run] = relationship(back_populates="metrics")


class StepRow(Base):
    """One target forward pass (workbench.trace.Step); (run_id, idx) is the primary key."""

    __tablename__ = "steps"

    run_id: Mapped[str] = mapped_column(String(32), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    tokens: Mapped[list[int]] = mapped_column(_json(), nullable=False, default=list)
    parents: Mapped[list[int]] = mapped_column(_json(), nullable=False, default=list)
    q: Mapped[list[float | None]] = mapped_column(_json(), nullable=False, default=list)
    p: Mapped[list[float]] = mapped_column(_json(), nullable=False, default=list)
    accepted: Mapped[list[int]] = mapped_column(_json(), nullable=False, default=list)
    committed: Mapped[list[int]] = mapped_column(_json(), nullable=False, default=list)
    bonus_token: Mapped[int] = mapped_column(Integer, nullable=False, default=-1)
    bonus_p: Mapped[float | None] = mapped_column(Float)  # NULL for NaN
    draft_s: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    verify_s: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    total_s: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    t_end: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    # drafter forwards that produced the draft (1: a block drafted in one forward); 0: not counted
    draft_forwards: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")

    run: Mapped[Run] = relationship(back_populates="steps")


class Training(Owned, Base):
    """One self-distillation training (``workbench train``) of drafter heads or of a draft model.

    Its measurements are JSON written by the trainer as it goes (store.trainings):
    ``data`` the data sizes, ``curves`` ``{name: [[step, value], ...]}``, ``accuracy``
    held-out ``{"top1": [per head/position], "top5": [...]}``, ``timings`` seconds per phase.
    ``kind`` is checked by the repository, not the schema, so a new kind needs no migration.
    """

    __tablename__ = "trainings"
    __table_args__ = (CheckConstraint(_STATUS_CHECK, name="status"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="running")
    error: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # one of workbench.config.TRAINING_KINDS
    target: Mapped[str] = mapped_column(Text, nullable=False)  # model spec
    out_dir: Mapped[str | None] = mapped_column(Text)  # where the trained heads / model are written
    config: Mapped[dict[str, Any]] = mapped_column(_json(), nullable=False, default=dict)  # training settings
    data: Mapped[dict[str, Any] | None] = mapped_column(_json())  # prompts, responses, tokens, held-out tokens
    curves: Mapped[dict[str, Any] | None] = mapped_column(_json())  # {"loss": [[step, value], ...], ...}
    accuracy: Mapped[dict[str, Any] | None] = mapped_column(_json())  # {"top1": [...], "top5": [...], ...}
    timings: Mapped[dict[str, Any] | None] = mapped_column(_json())  # generate_s, features_s, train_s, total_s
    env: Mapped[dict[str, Any]] = mapped_column(_json(), nullable=False, default=dict)


class Advice(Owned, Base):
    """One ``workbench advise``: which decoding method to use for a target on this machine, and why.

    ``request`` is what was asked (target, drafters, prompts, budget, backend; enough to run it again),
    ``result`` what it found (the cost profile used, each configuration's probe measurements and predicted
    speedup, the verification's measured speedups, the explanation), written by workbench.advisor;
    ``probe_benchmark_id`` holds its probe runs, ``verify_benchmark_id`` its verification benchmark.
    """

    __tablename__ = "advice"
    __table_args__ = (CheckConstraint(_STATUS_CHECK, name="status"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="running")
    error: Mapped[str | None] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text, nullable=False)  # model spec
    backend: Mapped[str] = mapped_column(String(32), nullable=False)
    request: Mapped[dict[str, Any]] = mapped_column(_json(), nullable=False, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(_json())
    command: Mapped[str] = mapped_column(Text, nullable=False, default="")  # the command that reproduces it
    env: Mapped[dict[str, Any]] = mapped_column(_json(), nullable=False, default=dict)
    probe_benchmark_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("benchmarks.id",
                                                                                  ondelete="SET NULL"))
    verify_benchmark_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("benchmarks.id",
                                                                                   ondelete="SET NULL"))
