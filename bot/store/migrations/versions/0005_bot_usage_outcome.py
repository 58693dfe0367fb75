"""Usage rows record their outcome (failed requests give their quota back) and a keyed
hash of the member, so ``/tada forget`` clears the member's id without resetting quotas.

Rows from before count as delivered and have no hash (they are found by member id until
forgotten or pruned).

Revision ID: 0005_bot_usage_outcome
Revises: 0004_bot_job_token_encrypted
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_bot_usage_outcome"
down_revision = "0004_bot_job_token_encrypted"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bot_usage") as batch:
        batch.alter_column("discord_user_id", existing_type=sa.BigInteger, nullable=True)
        batch.add_column(sa.Column("member_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("job_id", sa.String(32), nullable=True))
        batch.add_column(
            sa.Column("outcome", sa.String(16), nullable=False, server_default="delivered")
        )
    op.create_index(
        "ix_bot_usage_member_key", "bot_usage", ["guild_id", "member_key", "feature", "created_at"]
    )
    op.create_index("ix_bot_usage_job", "bot_usage", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_bot_usage_job", table_name="bot_usage")
    op.drop_index("ix_bot_usage_member_key", table_name="bot_usage")
    op.execute("DELETE FROM bot_usage WHERE discord_user_id IS NULL")
    with op.batch_alter_table("bot_usage") as batch:
        batch.drop_column("outcome")
        batch.drop_column("job_id")
        batch.drop_column("member_key")
        batch.alter_column("discord_user_id", existing_type=sa.BigInteger, nullable=False)
