"""Tables of the server-admin policy (migration ``0003_bot_guild_policy``)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from bot.store.models import Base, utcnow


class GuildSettingsRow(Base):
    """One guild's configuration (a :class:`bot.policy.settings.GuildSettings` as JSON)
    and its shared demo key.

    No ``discord_user_id`` column on purpose: the settings belong to the guild, so a
    member's ``/tada forget`` must not delete them.
    """

    __tablename__ = "bot_guild_settings"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    settings: Mapped[str] = mapped_column(Text, nullable=False)
    # Fernet ciphertext of the guild's shared Ta-da key, encrypted like members' keys.
    shared_key_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    shared_key_set_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    # Bumped by every change: each process's cache compares it (one indexed read) instead
    # of trusting a time-to-live, so a change made in one process shows in all at once.
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    def __repr__(self) -> str:
        return f"<GuildSettingsRow {self.guild_id}>"


class UsageOutcome(StrEnum):
    """What became of a counted request."""

    HELD = "held"  # admitted, not recorded yet: counts until recorded or HOLD_SECONDS old
    PENDING = "pending"  # a job on its way: counts, so parallel requests cannot overrun
    DELIVERED = "delivered"  # the member got it: counts
    RELEASED = "released"  # failed or cancelled: counts for nothing but "asked" in reports


class UsageRow(Base):
    """One accepted request, counted for quotas, cooldowns and ``/tada-admin usage``.

    Quotas are sums over rows since the start of the period (day or month, UTC), so they
    reset on schedule without a job; rows older than the retention are pruned.

    ``/tada forget`` clears ``discord_user_id`` but keeps the row (``info["on_forget"]``):
    quotas find the member again by ``member_key``, a keyed hash of guild and member that
    only the bot's key links to a member, so forgetting does not reset a quota.
    """

    __tablename__ = "bot_usage"
    __table_args__ = (
        Index("ix_bot_usage_member", "guild_id", "discord_user_id", "feature", "created_at"),
        Index("ix_bot_usage_member_key", "guild_id", "member_key", "feature", "created_at"),
        Index("ix_bot_usage_guild_time", "guild_id", "created_at"),
        Index("ix_bot_usage_job", "job_id"),
        {"info": {"on_forget": "unlink"}},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # The member while they are known to the bot; cleared by /tada forget.
    discord_user_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # KeyBox.pseudonym of "<guild_id>:<member id>" (NULL on rows older than migration 0005).
    member_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The job that made the request, so its outcome can settle the row.
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    outcome: Mapped[str] = mapped_column(
        String(16), nullable=False, default=UsageOutcome.DELIVERED.value
    )
    feature: Mapped[str] = mapped_column(String(16), nullable=False)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    # Images or trainings: 1; speech: its characters.
    cost: Mapped[int] = mapped_column(Integer, nullable=False)
    # Ran on the guild's shared demo key (what the guild pays for).
    shared_key: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    def __repr__(self) -> str:
        return f"<UsageRow {self.guild_id}/{self.discord_user_id} {self.action} x{self.cost}>"


class QuotaLockRow(Base):
    """One row per guild, member (by pseudonym) and feature, written first by every quota
    admission: the write serialises the check-and-hold of one member's requests across
    bot processes (a row lock on PostgreSQL, the write lock on SQLite)."""

    __tablename__ = "bot_quota_locks"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    member_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    feature: Mapped[str] = mapped_column(String(16), primary_key=True)
    turns: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
