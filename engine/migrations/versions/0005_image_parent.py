"""Generations made from another image (upscale, vary) record their parent and operation.

Revision ID: 0005_image_parent
Revises: 0004_lora_validation
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_image_parent"
down_revision = "0004_lora_validation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("lora_generations", sa.Column("parent_id", sa.String(36), nullable=True))
    op.add_column("lora_generations", sa.Column("operation", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lora_generations") as batch:
        batch.drop_column("operation")
        batch.drop_column("parent_id")
