"""Tables of the bot's store. Changes go through Alembic (``bot/store/migrations``).

Convention for later tables (jobs, quotas, ...): a row about a member has a
``discord_user_id`` column, so ``/tada forget`` finds and deletes it with no extra code.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, DateTime, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MEMBER_COLUMN = "discord_user_id"


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every bot table."""


class LinkedVia(StrEnum):
    """How a member's API key came to the bot."""

    REGISTER = "register"  # the bot registered a new Ta-da account for them
    LINK = "link"  # they pasted a key they already had


class Member(Base):
    """A Discord user who registered or linked a Ta-da account."""

    __tablename__ = "members"

    discord_user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # Fernet ciphertext of the API key; the clear key is never stored.
    api_key_encrypted: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    linked_via: Mapped[str] = mapped_column(String(16), nullable=False)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    def __repr__(self) -> str:
        # Never the ciphertext either: reprs end up in logs and tracebacks.
        return f"<Member {self.discord_user_id} via {self.linked_via}>"
