"""Tables of the server-admin policy (migration ``0003_bot_guild_policy``)."""

from __future__ import annotations

from datetime import datetime

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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    def __repr__(self) -> str:
        return f"<GuildSettingsRow {self.guild_id}>"


class UsageRow(Base):
    """One accepted request, counted for quotas, cooldowns and ``/tada-admin usage``.

    Quotas are sums over rows since the start of the period (day or month, UTC), so they
    reset on schedule without a job; rows older than the retention are pruned.
    """

    __tablename__ = "bot_usage"
    __table_args__ = (
        Index("ix_bot_usage_member", "guild_id", "discord_user_id", "feature", "created_at"),
        Index("ix_bot_usage_guild_time", "guild_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    discord_user_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    feature: Mapped[str] = mapped_column(String(16), nullable=False)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    # Images or trainings: 1; speech: its characters.
    cost: Mapped[int] = mapped_column(Integer, nullable=False)
    # Ran on the guild's shared demo key (what the guild pays for).
    shared_key: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    def __repr__(self) -> str:
        return f"<UsageRow {self.guild_id}/{self.discord_user_id} {self.action} x{self.cost}>"
