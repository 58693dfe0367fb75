"""Generations record the generation they are a variation of.

Revision ID: 0003_lora_variation_of
Revises: 0002_lora
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_lora_variation_of"
down_revision = "0002_lora"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain column (like upload_id): SQLite cannot add a foreign key to a table in place.
    op.add_column("lora_generations", sa.Column("variation_of", sa.String(36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lora_generations") as batch:
        batch.drop_column("variation_of")
