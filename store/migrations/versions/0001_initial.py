"""Version 1: runs, params, metrics, steps, benchmarks and schema_info.

The schema as the first release created it (with ``create_all``, before
Alembic). Files of that release carry ``schema_info.version = 1`` and no
``alembic_version`` table; store.schema stamps them with this revision before
upgrading. Written out in full (not imported from store.models) so that it
stays what version 1 was.

Revision ID: 0001
Revises:
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_STATUS = "status IN ('running', 'finished', 'failed')"


def _child(name: str, *columns: sa.Column, pk: tuple[str, ...]) -> None:
    """A table keyed by (run_id, ...) that goes with its run."""
    op.create_table(
        name,
        sa.Column("run_id", sa.String(32), nullable=False),
        *columns,
        sa.PrimaryKeyConstraint("run_id", *pk, name=op.f(f"pk_{name}")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f(f"fk_{name}_run_id_runs"), ondelete="CASCADE"),
    )


def upgrade() -> None:
    op.create_table(
        "schema_info",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schema_info")),
        sa.CheckConstraint("id = 1", name=op.f("ck_schema_info_single_row")),
    )
    op.create_table(
        "benchmarks",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("suite", sa.String(200), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("env", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_benchmarks")),
        sa.CheckConstraint(_STATUS, name=op.f("ck_benchmarks_status")),
    )
    op.create_index(op.f("ix_benchmarks_created_at"), "benchmarks", ["created_at"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("method", sa.String(100), nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("draft", sa.Text),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("prompt_json", sa.JSON),
        sa.Column("prompt_ids", sa.JSON),
        sa.Column("output_text", sa.Text),
        sa.Column("output_ids", sa.JSON),
        sa.Column("sampling", sa.JSON, nullable=False),
        sa.Column("env", sa.JSON, nullable=False),
        sa.Column("trace_params", sa.JSON),
        sa.Column("acceptance_by_position", sa.JSON),
        sa.Column("benchmark_id", sa.String(32)),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("stop_reason", sa.String(32)),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.CheckConstraint(_STATUS, name=op.f("ck_runs_status")),
        sa.ForeignKeyConstraint(["benchmark_id"], ["benchmarks.id"], name=op.f("fk_runs_benchmark_id_benchmarks"),
                                ondelete="SET NULL"),
    )
    for name, cols in (("ix_runs_created_at", ["created_at"]), ("ix_runs_status", ["status"]),
                       ("ix_runs_method_status", ["method", "status"]), ("ix_runs_target", ["target"]),
                       ("ix_runs_benchmark_id", ["benchmark_id"])):
        op.create_index(op.f(name), "runs", cols)
    _child("params", sa.Column("key", sa.String(250), nullable=False), sa.Column("value", sa.Text, nullable=False),
           pk=("key",))
    _child("metrics", sa.Column("key", sa.String(250), nullable=False), sa.Column("value", sa.Float), pk=("key",))
    _child("steps",
           sa.Column("idx", sa.Integer, nullable=False),
           sa.Column("kind", sa.String(16), nullable=False),
           *(sa.Column(c, sa.JSON, nullable=False) for c in ("tokens", "parents", "q", "p", "accepted", "committed")),
           sa.Column("bonus_token", sa.Integer, nullable=False),
           sa.Column("bonus_p", sa.Float),
           *(sa.Column(c, sa.Float, nullable=False) for c in ("draft_s", "verify_s", "total_s", "t_end")),
           pk=("idx",))
    op.execute("INSERT INTO schema_info (id, version, created_at) VALUES (1, 1, CURRENT_TIMESTAMP)")


def downgrade() -> None:
    for name in ("steps", "metrics", "params", "runs", "benchmarks", "schema_info"):
        op.drop_table(name)
