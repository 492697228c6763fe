"""Version 6: whether a run was lossless, what made it lossy, and its quality against its baseline.

``runs.lossless`` (NOT NULL, default true: every method before this version was lossless),
``runs.lossy`` (workbench.trace.Trace.lossy: a JSON list of short lines, NULL when none) and
``runs.quality`` (workbench.quality.Quality.to_dict(): agreement, first divergence, NLL gap, ROUGE-L,
task score against the target's plain decoding; NULL when not measured). Written out in full (not
imported from store.models) so that it stays what version 6 was.

Revision ID: 0006
Revises: 0005
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("lossless", sa.Boolean, nullable=False, server_default=sa.text("1")))
    op.add_column("runs", sa.Column("lossy", sa.JSON))
    op.add_column("runs", sa.Column("quality", sa.JSON))
    op.execute("UPDATE schema_info SET version = 6")


def downgrade() -> None:
    with op.batch_alter_table("runs", recreate="always") as batch:
        batch.drop_column("quality")
        batch.drop_column("lossy")
        batch.drop_column("lossless")
    op.execute("UPDATE schema_info SET version = 5")
