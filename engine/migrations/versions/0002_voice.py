"""Voice tables: cloned voices and their generations.

Revision ID: 0002_voice
Revises: 0001_core
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_voice"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "voices",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "upload_id",
            sa.String(36),
            sa.ForeignKey("uploads.id", ondelete="SET NULL"),
            nullable=True,
            unique=True,
        ),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("sample_seconds", sa.Float, nullable=False),
        sa.Column("speech_seconds", sa.Float, nullable=False),
        sa.Column("median_f0_hz", sa.Float, nullable=False),
        sa.Column("base_similarity", sa.Float, nullable=True),
        sa.Column("profile", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_voices_user_created", "voices", ["user_id", "created_at"])
    op.create_table(
        "voice_generations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "voice_id",
            sa.String(36),
            sa.ForeignKey("voices.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("audio_key", sa.String(255), nullable=False),
        sa.Column("audio_format", sa.String(8), nullable=False),
        sa.Column("duration_seconds", sa.Float, nullable=False),
        sa.Column("similarity", sa.Float, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_voice_generations_user_created", "voice_generations", ["user_id", "created_at"]
    )
    op.create_index(
        "ix_voice_generations_voice_created", "voice_generations", ["voice_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_table("voice_generations")
    op.drop_table("voices")
