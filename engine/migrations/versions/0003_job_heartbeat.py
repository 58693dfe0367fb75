"""Job heartbeats: which claimed jobs still have a live worker.

Revision ID: 0003_job_heartbeat
Revises: 0001_core
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_job_heartbeat"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("heartbeat_at")
