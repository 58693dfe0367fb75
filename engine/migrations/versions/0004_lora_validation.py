"""Trainings record the validation image of their latest checkpoint.

Revision ID: 0004_lora_validation
Revises: 0004_upload_inspection
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_lora_validation"
down_revision = "0004_upload_inspection"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("lora_trainings", sa.Column("validation_key", sa.String(255), nullable=True))
    op.add_column("lora_trainings", sa.Column("validation_step", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lora_trainings") as batch:
        batch.drop_column("validation_step")
        batch.drop_column("validation_key")
