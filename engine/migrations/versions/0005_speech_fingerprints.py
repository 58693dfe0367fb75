"""Speech fingerprints: every generation's Chromaprint, for tracing clips back to it.

Revision ID: 0005_speech_fingerprints
Revises: 0004_lora_validation
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_speech_fingerprints"
down_revision = "0004_lora_validation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "speech_fingerprints",
        sa.Column(
            "generation_id",
            sa.String(36),
            sa.ForeignKey("voice_generations.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "voice_id",
            sa.String(36),
            sa.ForeignKey("voices.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("fingerprint", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_speech_fingerprints_user", "speech_fingerprints", ["user_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_speech_fingerprints_user", table_name="speech_fingerprints")
    op.drop_table("speech_fingerprints")
