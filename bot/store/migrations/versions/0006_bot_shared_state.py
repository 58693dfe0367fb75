"""State that several bot processes share: job claims with leases, the delivery in flight,
a version counter on guild settings (caches check it), and one lock row per member and
feature that serialises quota admissions across processes.

Revision ID: 0006_bot_shared_state
Revises: 0005_bot_usage_outcome
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_bot_shared_state"
down_revision = "0005_bot_usage_outcome"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bot_jobs") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("post_started_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("post_attempt_via", sa.String(16), nullable=True))
    op.create_index("ix_bot_jobs_unposted", "bot_jobs", ["posted_via", "state", "created_at"])
    with op.batch_alter_table("bot_guild_settings") as batch:
        batch.add_column(sa.Column("version", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "bot_quota_locks",
        sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("member_key", sa.String(64), primary_key=True),
        sa.Column("feature", sa.String(16), primary_key=True),
        sa.Column("turns", sa.Integer, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("bot_quota_locks")
    with op.batch_alter_table("bot_guild_settings") as batch:
        batch.drop_column("version")
    op.drop_index("ix_bot_jobs_unposted", table_name="bot_jobs")
    with op.batch_alter_table("bot_jobs") as batch:
        batch.drop_column("post_attempt_via")
        batch.drop_column("post_started_at")
        batch.drop_column("lease_until")
        batch.drop_column("claimed_by")
