"""Members: Discord user -> encrypted Ta-da API key.

Revision ID: 0001_bot_members
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_bot_members"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "members",
        sa.Column("discord_user_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("api_key_encrypted", sa.LargeBinary, nullable=False),
        sa.Column("linked_via", sa.String(16), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("members")
