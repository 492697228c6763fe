"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else ""}
    op.execute("UPDATE schema_info SET version = ${int(up_revision)}")


def downgrade() -> None:
    ${downgrades if downgrades else ""}
    op.execute("UPDATE schema_info SET version = ${int(down_revision)}")
