"""Version 7: ``steps.draft_forwards``, how many drafter forwards produced the step's draft.

A block drafter (blockwise, dflash) drafts its whole block in one forward and records 1; a
drafter that does not count its forwards records 0 (the column's default, also for every
existing row). Written out in full (not imported from store.models) so that it stays what
version 7 was.

Revision ID: 0007
Revises: 0006
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("steps", sa.Column("draft_forwards", sa.Integer, nullable=False, server_default="0"))
    op.execute("UPDATE schema_info SET version = 7")


def downgrade() -> None:
    with op.batch_alter_table("steps", recreate="always") as batch:
        batch.drop_column("draft_forwards")
    op.execute("UPDATE schema_info SET version = 6")
