"""Version 2: who owns a running run or benchmark, its heartbeat, and the ``interrupted`` status.

Adds ``owner_pid``, ``owner_host``, ``owner_started`` and ``heartbeat_at`` to
``runs`` and ``benchmarks`` and lets ``status`` be ``interrupted`` (set when
the owner died without closing the row, see store.liveness). SQLite cannot
change a CHECK constraint in place, so both tables are rebuilt (batch mode:
copy, drop, rename; indexes are recreated, rows and ids are kept).

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_OLD = "status IN ('running', 'finished', 'failed')"
_NEW = "status IN ('running', 'finished', 'failed', 'interrupted')"
_OWNER = (("owner_pid", sa.Integer), ("owner_host", sa.String(255)), ("owner_started", sa.Float),
          ("heartbeat_at", sa.DateTime))


def upgrade() -> None:
    for table in ("benchmarks", "runs"):
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.drop_constraint(op.f(f"ck_{table}_status"), type_="check")
            batch.create_check_constraint(op.f(f"ck_{table}_status"), sa.text(_NEW))
            for name, type_ in _OWNER:
                batch.add_column(sa.Column(name, type_))
    op.execute("UPDATE schema_info SET version = 2")


def downgrade() -> None:
    for table in ("benchmarks", "runs"):
        op.execute(f"UPDATE {table} SET status = 'failed' WHERE status = 'interrupted'")
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.drop_constraint(op.f(f"ck_{table}_status"), type_="check")
            batch.create_check_constraint(op.f(f"ck_{table}_status"), sa.text(_OLD))
            for name, _ in reversed(_OWNER):
                batch.drop_column(name)
    op.execute("UPDATE schema_info SET version = 1")
