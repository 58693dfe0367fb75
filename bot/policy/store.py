"""Reads and writes of guild settings and usage; the only SQL of the policy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    and_,
    case,
    cast,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.gate import Action, Feature
from bot.policy.models import GuildSettingsRow, QuotaLockRow, UsageOutcome, UsageRow
from bot.policy.quotas import as_utc
from bot.policy.settings import GuildSettings
from bot.store import Store
from bot.store.models import JobRow


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


def counts(hold_since: datetime | None) -> ColumnElement[bool]:
    """Rows that count against quotas and cooldowns: everything not given back, and holds
    made since ``hold_since`` (an older hold was never recorded: its request went no
    further; ``None``: no holds)."""
    recorded = UsageRow.outcome.in_((UsageOutcome.PENDING.value, UsageOutcome.DELIVERED.value))
    if hold_since is None:
        return recorded
    return or_(
        recorded,
        and_(UsageRow.outcome == UsageOutcome.HELD.value, UsageRow.created_at >= hold_since),
    )


# Rows a usage report shows: holds are not requests yet.
REPORTED = UsageRow.outcome != UsageOutcome.HELD.value


def _used_query(
    guild_id: int,
    member: MemberRef,
    feature: Feature,
    actions: Iterable[Action],
    since: datetime,
    hold_since: datetime | None,
) -> Select[int]:
    return select(func.coalesce(func.sum(UsageRow.cost), 0)).where(
        UsageRow.guild_id == guild_id,
        member.matches(),
        counts(hold_since),
        UsageRow.feature == feature.value,
        UsageRow.action.in_([a.value for a in actions]),
        UsageRow.created_at >= since,
    )


def _last_use_query(
    guild_id: int,
    member: MemberRef,
    feature: Feature,
    actions: Iterable[Action],
    hold_since: datetime | None,
) -> Select[datetime]:
    return select(func.max(UsageRow.created_at)).where(
        UsageRow.guild_id == guild_id,
        member.matches(),
        counts(hold_since),
        UsageRow.feature == feature.value,
        UsageRow.action.in_([a.value for a in actions]),
    )


class QuotaTurn:
    """One member's admission, alone: reads and the hold it makes happen in one
    transaction that holds the member's lock row, so two processes admitting the same
    member's requests at once see each other's holds (check-and-hold is atomic)."""

    def __init__(
        self, session: AsyncSession, guild_id: int, member: MemberRef, feature: Feature
    ) -> None:
        self._session = session
        self._guild_id = guild_id
        self._member = member
        self._feature = feature

    async def used(self, actions: Iterable[Action], since: datetime, hold_since: datetime) -> int:
        """As :meth:`PolicyStore.used`, inside the turn."""
        query = _used_query(self._guild_id, self._member, self._feature, actions, since, hold_since)
        return int(await self._session.scalar(query) or 0)

    async def last_use(self, actions: Iterable[Action], hold_since: datetime) -> datetime | None:
        """As :meth:`PolicyStore.last_use`, inside the turn."""
        query = _last_use_query(self._guild_id, self._member, self._feature, actions, hold_since)
        last = await self._session.scalar(query)
        return as_utc(last) if last is not None else None

    def hold(self, action: Action, cost: int, at: datetime) -> None:
        """Count the admitted request until it is recorded (committed with the turn)."""
        self._session.add(
            UsageRow(
                guild_id=self._guild_id,
                discord_user_id=self._member.user_id,
                member_key=self._member.keys[0],
                outcome=UsageOutcome.HELD.value,
                feature=self._feature.value,
                action=action.value,
                cost=cost,
                shared_key=False,
                created_at=at,
            )
        )


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


class PolicyStore:
    """Guild settings documents, shared keys (encrypted by the caller) and usage rows."""

    def __init__(self, store: Store) -> None:
        self._store = store
        # Parsed settings per guild with the row's version they were read at: a read
        # compares the version (one primary-key read) and parses again only on a change,
        # whichever process made it. Version -1: no row (the defaults).
        self._cache: dict[int, tuple[int, GuildSettings]] = {}

    def __repr__(self) -> str:
        return f"<PolicyStore {self._store!r}>"

    async def settings(self, guild_id: int) -> GuildSettings:
        """The guild's settings; the defaults when it never configured anything."""
        cached = self._cache.get(guild_id)
        async with self._store.session() as session:
            version = await session.scalar(
                select(GuildSettingsRow.version).where(GuildSettingsRow.guild_id == guild_id)
            )
            version = -1 if version is None else int(version)
            if cached is not None and cached[0] == version:
                return cached[1]
            row = await session.get(GuildSettingsRow, guild_id)
        if row is None:
            version, settings = -1, GuildSettings()
        else:
            version, settings = row.version, GuildSettings.model_validate_json(row.settings)
        self._cache[guild_id] = (version, settings)
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
                row = GuildSettingsRow(guild_id=guild_id, settings=document, version=1)
                session.add(row)
            else:
                row.settings = document
                row.version = row.version + 1
            version = row.version
        self._cache[guild_id] = (version, updated)
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
                    guild_id=guild_id, settings=GuildSettings().model_dump_json(), version=1
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
        hold_since: datetime | None = None,
    ) -> None:
        """Count one accepted request (pending until its job settles it, when it has one);
        drop the guild's rows older than ``prune_before``. With ``hold_since`` the
        member's oldest hold for ``action`` made since then becomes this row (taken by
        one conditional update, so two processes never both take one hold)."""
        outcome = (UsageOutcome.PENDING if job_id else UsageOutcome.DELIVERED).value
        async with self._store.session() as session, session.begin():
            taken = False
            if hold_since is not None:
                hold_id = await session.scalar(
                    select(UsageRow.id)
                    .where(
                        UsageRow.guild_id == guild_id,
                        member.matches(),
                        UsageRow.outcome == UsageOutcome.HELD.value,
                        UsageRow.feature == feature.value,
                        UsageRow.action == action.value,
                        UsageRow.created_at >= hold_since,
                    )
                    .order_by(UsageRow.created_at, UsageRow.id)
                    .limit(1)
                )
                if hold_id is not None:
                    result = await session.execute(
                        update(UsageRow)
                        .where(UsageRow.id == hold_id, UsageRow.outcome == UsageOutcome.HELD.value)
                        .values(
                            job_id=job_id,
                            outcome=outcome,
                            cost=cost,
                            shared_key=shared_key,
                            created_at=at,
                        )
                    )
                    taken = int(getattr(result, "rowcount", 0) or 0) == 1
            if not taken:
                session.add(
                    UsageRow(
                        guild_id=guild_id,
                        discord_user_id=member.user_id,
                        member_key=member.keys[0],
                        job_id=job_id,
                        outcome=outcome,
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

    async def release_orphans(self) -> int:
        """Give back pending requests whose job row is gone (the member was forgotten
        before it ran, in whichever process); how many."""
        async with self._store.session() as session, session.begin():
            result = await session.execute(
                update(UsageRow)
                .where(
                    UsageRow.outcome == UsageOutcome.PENDING.value,
                    UsageRow.job_id.is_not(None),
                    UsageRow.job_id.not_in(select(JobRow.id)),
                )
                .values(outcome=UsageOutcome.RELEASED.value)
            )
        return int(getattr(result, "rowcount", 0) or 0)

    async def used(
        self,
        guild_id: int,
        member: MemberRef,
        feature: Feature,
        actions: Iterable[Action],
        since: datetime,
        hold_since: datetime | None = None,
    ) -> int:
        """The member's total cost of ``actions`` of ``feature`` since ``since`` (what was
        delivered, is on its way or is held since ``hold_since``; not what was given back)."""
        query = _used_query(guild_id, member, feature, actions, since, hold_since)
        async with self._store.session() as session:
            return int(await session.scalar(query) or 0)

    async def last_use(
        self,
        guild_id: int,
        member: MemberRef,
        feature: Feature,
        actions: Iterable[Action],
        hold_since: datetime | None = None,
    ) -> datetime | None:
        """When the member last made one of ``actions`` of ``feature`` here (not counting
        requests given back, nor holds older than ``hold_since``)."""
        query = _last_use_query(guild_id, member, feature, actions, hold_since)
        async with self._store.session() as session:
            last = await session.scalar(query)
        return as_utc(last) if last is not None else None

    @asynccontextmanager
    async def quota_turn(
        self, guild_id: int, member: MemberRef, feature: Feature
    ) -> AsyncIterator[QuotaTurn]:
        """The member's turn to be admitted, across every process sharing the store: the
        lock row is written first (created if new, then updated), which blocks another
        process's turn for the same member until this transaction ends."""
        key = {"guild_id": guild_id, "member_key": member.keys[0], "feature": feature.value}
        insert = pg_insert if self._store.engine.dialect.name == "postgresql" else sqlite_insert
        async with self._store.session() as session, session.begin():
            await session.execute(
                insert(QuotaLockRow).values(**key, turns=0).on_conflict_do_nothing()
            )
            await session.execute(
                update(QuotaLockRow)
                .where(
                    QuotaLockRow.guild_id == guild_id,
                    QuotaLockRow.member_key == key["member_key"],
                    QuotaLockRow.feature == feature.value,
                )
                .values(turns=QuotaLockRow.turns + 1)
            )
            yield QuotaTurn(session, guild_id, member, feature)

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
            .where(UsageRow.guild_id == guild_id, UsageRow.created_at >= since, REPORTED)
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
                REPORTED,
            )
            .group_by(UsageRow.discord_user_id)
            .order_by(count.desc(), UsageRow.discord_user_id)
            .limit(limit)
        )
        async with self._store.session() as session:
            rows = (await session.execute(query)).all()
        return [TopMember(int(user), int(n)) for user, n in rows if user is not None]
