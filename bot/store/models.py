"""Tables of the bot's store. Changes go through Alembic (``bot/store/migrations``).

Convention for later tables (jobs, quotas, ...): a row about a member has a
``discord_user_id`` column, so ``/tada forget`` finds and deletes it with no extra code.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, LargeBinary, String, Text
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


class JobRow(Base):
    """One creation request (clone, speak, train, generate, demo) and where its result went.

    Written before any Ta-da call, so a restart finds every accepted request; the runner
    (``bot/jobs``) owns the meaning of ``state``, ``params`` and ``result`` (JSON).
    """

    __tablename__ = "bot_jobs"
    __table_args__ = (Index("ix_bot_jobs_unposted", "posted_via", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    discord_user_id: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    channel_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    params: Mapped[str] = mapped_column(Text, nullable=False)
    # The Ta-da id the job is about once known (a training's upload id, a generation id).
    tada_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    private: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # A guild's shared demo key (Fernet ciphertext), when the gate lent one for this job.
    shared_key_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # The interaction's follow-up webhook, valid 15 minutes; cleared once the result is out.
    # The token is a credential while it lives: Fernet ciphertext, like the members' keys.
    application_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    interaction_token_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    interaction_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    progress_message_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    result_message_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    posted_via: Mapped[str | None] = mapped_column(String(16), nullable=True)
    post_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    posted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Which bot process works on the job, until when (it renews the lease while it lives;
    # another process takes an expired claim over). NULL: nobody, anyone may claim it.
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Set just before a post is sent (when, and to which destination) and left set: a
    # post "in doubt" when its process died before ``posted_via`` was recorded
    # (see bot.jobs.deliver).
    post_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    post_attempt_via: Mapped[str | None] = mapped_column(String(16), nullable=True)

    def __repr__(self) -> str:
        # No params or token: prompts and webhook tokens stay out of logs.
        return f"<JobRow {self.id} {self.kind} {self.state}>"
