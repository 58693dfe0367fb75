"""Guild policy: each guild's settings and shared demo key, and usage counted for quotas.

Revision ID: 0003_bot_guild_policy
Revises: 0002_bot_jobs
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_bot_guild_policy"
down_revision = "0002_bot_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bot_guild_settings",
        sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("shared_key_encrypted", sa.LargeBinary, nullable=True),
        sa.Column("shared_key_set_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "bot_usage",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("guild_id", sa.BigInteger, nullable=False),
        sa.Column("discord_user_id", sa.BigInteger, nullable=False),
        sa.Column("feature", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("cost", sa.Integer, nullable=False),
        sa.Column("shared_key", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_bot_usage_member",
        "bot_usage",
        ["guild_id", "discord_user_id", "feature", "created_at"],
    )
    op.create_index("ix_bot_usage_guild_time", "bot_usage", ["guild_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_bot_usage_guild_time", table_name="bot_usage")
    op.drop_index("ix_bot_usage_member", table_name="bot_usage")
    op.drop_table("bot_usage")
    op.drop_table("bot_guild_settings")
