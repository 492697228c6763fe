"""Version 5: ``runs.notes``, what a run says about itself (workbench.trace.Trace.notes).

A JSON list of ``{"kind", "text", ...numbers}``: that cost-aware sizing chose not to draft (and
why, with the costs that drove it), that a cost profile was measured for the run first, or that
the run's verification forwards disagreed with the profile (which was then marked stale). One
nullable column; existing runs keep NULL (no notes). Written out in full (not imported from
store.models) so that it stays what version 5 was.

Revision ID: 0005
Revises: 0004
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("notes", sa.JSON))
    op.execute("UPDATE schema_info SET version = 5")


def downgrade() -> None:
    with op.batch_alter_table("runs", recreate="always") as batch:
        batch.drop_column("notes")
    op.execute("UPDATE schema_info SET version = 4")
