"""Jobs keep their interaction token encrypted (Fernet, the members' key box), not in clear.

The clear column is dropped with what it held: a token lives 15 minutes, and a job whose
token is gone is posted in its channel (or by DM) instead.

Revision ID: 0004_bot_job_token_encrypted
Revises: 0003_bot_guild_policy
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_bot_job_token_encrypted"
down_revision = "0003_bot_guild_policy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bot_jobs") as batch:
        batch.add_column(sa.Column("interaction_token_encrypted", sa.LargeBinary, nullable=True))
        batch.drop_column("interaction_token")


def downgrade() -> None:
    with op.batch_alter_table("bot_jobs") as batch:
        batch.add_column(sa.Column("interaction_token", sa.Text, nullable=True))
        batch.drop_column("interaction_token_encrypted")
