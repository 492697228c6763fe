"""Version 4: the ``advice`` table, one row per ``workbench advise`` (which method to use here, and why).

A new table only; ``runs``, ``benchmarks``, ``trainings`` and their rows are untouched. An advice
names the benchmark that holds its probe runs and the one that verified its top configurations
(``ON DELETE SET NULL``: deleting a benchmark keeps the advice), keeps what was asked (``request``),
what it found (``result``: measurements, predictions, the verification's numbers, the explanation) and
the command that reproduces it. Like a training it has a checked ``status`` (``interrupted`` when its
owner died, see store.liveness), an owner and a heartbeat. Written out in full (not imported from
store.models) so that it stays what version 4 was.

Revision ID: 0004
Revises: 0003
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_STATUS = "status IN ('running', 'finished', 'failed', 'interrupted')"


def upgrade() -> None:
    op.create_table(
        "advice",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("result", sa.JSON),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("env", sa.JSON, nullable=False),
        sa.Column("probe_benchmark_id", sa.String(32)),
        sa.Column("verify_benchmark_id", sa.String(32)),
        sa.Column("owner_pid", sa.Integer),
        sa.Column("owner_host", sa.String(255)),
        sa.Column("owner_started", sa.Float),
        sa.Column("heartbeat_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_advice")),
        sa.CheckConstraint(_STATUS, name=op.f("ck_advice_status")),
        sa.ForeignKeyConstraint(["probe_benchmark_id"], ["benchmarks.id"], ondelete="SET NULL",
                                name=op.f("fk_advice_probe_benchmark_id_benchmarks")),
        sa.ForeignKeyConstraint(["verify_benchmark_id"], ["benchmarks.id"], ondelete="SET NULL",
                                name=op.f("fk_advice_verify_benchmark_id_benchmarks")),
    )
    op.create_index(op.f("ix_advice_created_at"), "advice", ["created_at"])
    op.execute("UPDATE schema_info SET version = 4")


def downgrade() -> None:
    op.drop_index(op.f("ix_advice_created_at"), table_name="advice")
    op.drop_table("advice")
    op.execute("UPDATE schema_info SET version = 3")
