"""Reads and writes of guild settings and usage; the only SQL of the policy."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Integer, and_, case, cast, delete, func, or_, select, update

from bot.gate import Action, Feature
from bot.policy.models import GuildSettingsRow, UsageOutcome, UsageRow
from bot.policy.quotas import as_utc
from bot.policy.settings import GuildSettings
from bot.store import Store


@dataclass(frozen=True, slots=True)
class UsageLine:
    """Use of one action in a guild over a period."""

    feature: Feature
    action: Action
    requests: int  # asked (admitted), whatever became of them
    cost: int
    on_shared_key: int
    delivered: int = 0  # of ``requests``, those the member got
    delivered_cost: int = 0


@dataclass(frozen=True, slots=True)
class MemberRef:
    """A member as usage rows know them: by id while linked, by pseudonym always
    (``keys``: the pseudonyms under every configured key, the first for new rows)."""

    user_id: int
    keys: tuple[str, ...]

    def matches(self) -> ColumnElement[bool]:
        """The rows of this member (rows older than pseudonyms: by id)."""
        return or_(
            UsageRow.member_key.in_(self.keys),
            and_(UsageRow.member_key.is_(None), UsageRow.discord_user_id == self.user_id),
        )


# Rows that count against quotas and cooldowns: everything not given back.
COUNTS = UsageRow.outcome != UsageOutcome.RELEASED.value


@dataclass(frozen=True, slots=True)
class TopMember:
    """A member and how many requests they made over a period."""

    discord_user_id: int
    requests: int


@dataclass(frozen=True, slots=True)
class SharedKeyState:
    """The guild's shared key as stored: ciphertext and when it was set."""

    ciphertext: bytes
    set_at: datetime


# Settings are read on every request and change rarely: each process keeps them this
# long (changes made through this process show at once; another process's within this).
SETTINGS_TTL_SECONDS = 10.0


class PolicyStore:
    """Guild settings documents, shared keys (encrypted by the caller) and usage rows."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[int, tuple[float, GuildSettings]] = {}

    def __repr__(self) -> str:
        return f"<PolicyStore {self._store!r}>"

    async def settings(self, guild_id: int) -> GuildSettings:
        """The guild's settings; the defaults when it never configured anything."""
        cached = self._cache.get(guild_id)
        if cached is not None and time.monotonic() - cached[0] < SETTINGS_TTL_SECONDS:
            return cached[1]
        async with self._store.session() as session:
            row = await session.get(GuildSettingsRow, guild_id)
        settings = (
            GuildSettings() if row is None else GuildSettings.model_validate_json(row.settings)
        )
        self._cache[guild_id] = (time.monotonic(), settings)
        return settings

    async def update(
        self, guild_id: int, change: Callable[[GuildSettings], GuildSettings]
    ) -> GuildSettings:
        """Apply ``change`` to the guild's settings in one transaction; the new settings."""
        self._cache.pop(guild_id, None)
        async with self._store.session() as session, session.begin():
            row = await session.get(GuildSettingsRow, guild_id, with_for_update=True)
            current = (
                GuildSettings() if row is None else GuildSettings.model_validate_json(row.settings)
            )
            updated = change(current)
            document = updated.model_dump_json()
            if row is None:
                session.add(GuildSettingsRow(guild_id=guild_id, settings=document))
            else:
                row.settings = document
        self._cache[guild_id] = (time.monotonic(), updated)
        return updated

    async def shared_key(self, guild_id: int) -> SharedKeyState | None:
        """The guild's shared key ciphertext, if one is set."""
        async with self._store.session() as session:
            row = await session.get(GuildSettingsRow, guild_id)
        if row is None or row.shared_key_encrypted is None or row.shared_key_set_at is None:
            return None
        return SharedKeyState(row.shared_key_encrypted, as_utc(row.shared_key_set_at))

    async def set_shared_key(self, guild_id: int, ciphertext: bytes | None, at: datetime) -> bool:
        """Store (or with ``None`` delete) the shared key; whether one was there before."""
        async with self._store.session() as session, session.begin():
            row = await session.get(GuildSettingsRow, guild_id, with_for_update=True)
            if row is None:
                if ciphertext is None:
                    return False
                row = GuildSettingsRow(
                    guild_id=guild_id, settings=GuildSettings().model_dump_json()
                )
                session.add(row)
                had = False
            else:
                had = row.shared_key_encrypted is not None
            row.shared_key_encrypted = ciphertext
            row.shared_key_set_at = at if ciphertext is not None else None
        return had

    async def add_usage(
        self,
        *,
        guild_id: int,
        member: MemberRef,
        feature: Feature,
        action: Action,
        cost: int,
        shared_key: bool,
        at: datetime,
        job_id: str | None = None,
        prune_before: datetime | None = None,
    ) -> None:
        """Count one accepted request (pending until its job settles it, when it has one);
        drop the guild's rows older than ``prune_before``."""
        async with self._store.session() as session, session.begin():
            session.add(
                UsageRow(
                    guild_id=guild_id,
                    discord_user_id=member.user_id,
                    member_key=member.keys[0],
                    job_id=job_id,
                    outcome=(UsageOutcome.PENDING if job_id else UsageOutcome.DELIVERED).value,
                    feature=feature.value,
                    action=action.value,
                    cost=cost,
                    shared_key=shared_key,
                    created_at=at,
                )
            )
            if prune_before is not None:
                await session.execute(
                    delete(UsageRow).where(
                        UsageRow.guild_id == guild_id, UsageRow.created_at < prune_before
                    )
                )

    async def settle(self, job_id: str, outcome: UsageOutcome) -> int:
        """Set the outcome of the job's pending rows; how many there were."""
        async with self._store.session() as session, session.begin():
            result = await session.execute(
                update(UsageRow)
                .where(
                    UsageRow.job_id == job_id,
                    UsageRow.outcome == UsageOutcome.PENDING.value,
                )
                .values(outcome=outcome.value)
            )
        return int(getattr(result, "rowcount", 0) or 0)

    async def used(
        self,
        guild_id: int,
        member: MemberRef,
        feature: Feature,
        actions: Iterable[Action],
        since: datetime,
    ) -> int:
        """The member's total cost of ``actions`` of ``feature`` since ``since`` (what was
        delivered or is on its way; not what was given back)."""
        query = select(func.coalesce(func.sum(UsageRow.cost), 0)).where(
            UsageRow.guild_id == guild_id,
            member.matches(),
            COUNTS,
            UsageRow.feature == feature.value,
            UsageRow.action.in_([a.value for a in actions]),
            UsageRow.created_at >= since,
        )
        async with self._store.session() as session:
            return int(await session.scalar(query) or 0)

    async def last_use(
        self, guild_id: int, member: MemberRef, feature: Feature, actions: Iterable[Action]
    ) -> datetime | None:
        """When the member last made one of ``actions`` of ``feature`` here (not counting
        requests given back)."""
        query = select(func.max(UsageRow.created_at)).where(
            UsageRow.guild_id == guild_id,
            member.matches(),
            COUNTS,
            UsageRow.feature == feature.value,
            UsageRow.action.in_([a.value for a in actions]),
        )
        async with self._store.session() as session:
            last = await session.scalar(query)
        return as_utc(last) if last is not None else None

    async def usage(self, guild_id: int, since: datetime) -> list[UsageLine]:
        """Requests and cost per action in the guild since ``since``: asked, and delivered."""
        shared = func.sum(cast(UsageRow.shared_key, Integer))
        delivered = UsageRow.outcome == UsageOutcome.DELIVERED.value
        query = (
            select(
                UsageRow.feature,
                UsageRow.action,
                func.count(UsageRow.id),
                func.sum(UsageRow.cost),
                shared,
                func.sum(case((delivered, 1), else_=0)),
                func.sum(case((delivered, UsageRow.cost), else_=0)),
            )
            .where(UsageRow.guild_id == guild_id, UsageRow.created_at >= since)
            .group_by(UsageRow.feature, UsageRow.action)
        )
        async with self._store.session() as session:
            rows = (await session.execute(query)).all()
        return [
            UsageLine(
                Feature(f), Action(a), int(n), int(c or 0), int(s or 0), int(d or 0), int(dc or 0)
            )
            for f, a, n, c, s, d, dc in rows
        ]

    async def top_members(self, guild_id: int, since: datetime, limit: int) -> list[TopMember]:
        """The members with the most requests in the guild since ``since`` (forgotten
        members, whose rows have no id any more, are not listed)."""
        count = func.count(UsageRow.id)
        query = (
            select(UsageRow.discord_user_id, count)
            .where(
                UsageRow.guild_id == guild_id,
                UsageRow.created_at >= since,
                UsageRow.discord_user_id.is_not(None),
            )
            .group_by(UsageRow.discord_user_id)
            .order_by(count.desc(), UsageRow.discord_user_id)
            .limit(limit)
        )
        async with self._store.session() as session:
            rows = (await session.execute(query)).all()
        return [TopMember(int(user), int(n)) for user, n in rows if user is not None]
