"""LoRA trainings and image generations.

Revision ID: 0002_lora
Revises: 0001_core
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_lora"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lora_trainings",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "upload_id",
            sa.String(36),
            sa.ForeignKey("uploads.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        sa.Column(
            "job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("trigger_word", sa.String(50), nullable=False),
        sa.Column("lora_key", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_lora_trainings_user", "lora_trainings", ["user_id", "created_at"])
    op.create_table(
        "lora_generations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "training_id",
            sa.String(36),
            sa.ForeignKey("lora_trainings.id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column("upload_id", sa.String(36), nullable=True),
        sa.Column("demo", sa.String(32), nullable=True),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("enhanced_prompt", sa.Text, nullable=False),
        sa.Column("negative_prompt", sa.Text, nullable=False),
        sa.Column("enhancer", sa.String(32), nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("image_key", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_lora_generations_user", "lora_generations", ["user_id", "created_at"])
    op.create_index(
        "ix_lora_generations_training", "lora_generations", ["training_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_table("lora_generations")
    op.drop_table("lora_trainings")
