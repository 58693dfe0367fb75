"""Jobs: every creation request a member makes, from the interaction to the posted result.

Revision ID: 0002_bot_jobs
Revises: 0001_bot_members
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_bot_jobs"
down_revision = "0001_bot_members"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bot_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("discord_user_id", sa.BigInteger, nullable=False, index=True),
        sa.Column("guild_id", sa.BigInteger, nullable=True),
        sa.Column("channel_id", sa.BigInteger, nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("tada_id", sa.String(128), nullable=True),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("private", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("shared_key_encrypted", sa.LargeBinary, nullable=True),
        sa.Column("application_id", sa.BigInteger, nullable=True),
        sa.Column("interaction_token", sa.Text, nullable=True),
        sa.Column("interaction_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("progress_message_id", sa.BigInteger, nullable=True),
        sa.Column("result_message_id", sa.BigInteger, nullable=True),
        sa.Column("posted_via", sa.String(16), nullable=True),
        sa.Column("post_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("bot_jobs")
