"""Version 3: the ``trainings`` table, one row per self-distillation training (``workbench train``).

A new table only; ``runs``, ``benchmarks`` and their rows are untouched. Like
runs and benchmarks, a training has a checked ``status`` (``interrupted`` when
its owner died, see store.liveness), an owner and a heartbeat. Its measurements
(data sizes, loss curves, held-out accuracy, timings) are JSON columns. Written
out in full (not imported from store.models) so that it stays what version 3 was.

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_STATUS = "status IN ('running', 'finished', 'failed', 'interrupted')"


def upgrade() -> None:
    op.create_table(
        "trainings",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("out_dir", sa.Text),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("data", sa.JSON),
        sa.Column("curves", sa.JSON),
        sa.Column("accuracy", sa.JSON),
        sa.Column("timings", sa.JSON),
        sa.Column("env", sa.JSON, nullable=False),
        sa.Column("owner_pid", sa.Integer),
        sa.Column("owner_host", sa.String(255)),
        sa.Column("owner_started", sa.Float),
        sa.Column("heartbeat_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trainings")),
        sa.CheckConstraint(_STATUS, name=op.f("ck_trainings_status")),
    )
    op.create_index(op.f("ix_trainings_created_at"), "trainings", ["created_at"])
    op.execute("UPDATE schema_info SET version = 3")


def downgrade() -> None:
    op.drop_index(op.f("ix_trainings_created_at"), table_name="trainings")
    op.drop_table("trainings")
    op.execute("UPDATE schema_info SET version = 2")
