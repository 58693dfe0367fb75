"""Uploads keep the report of their zip's one inspection; joins the three heads before it.

Revision ID: 0004_upload_inspection
Revises: 0002_voice, 0003_lora_variation_of, 0003_job_heartbeat
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_upload_inspection"
down_revision = ("0002_voice", "0003_lora_variation_of", "0003_job_heartbeat")
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: rows from before it (and bytes that arrive without passing the engine) are
    # inspected at their first use, once.
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("inspection", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("inspection")
