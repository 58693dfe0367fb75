"""Job rows: written before any Ta-da call, updated at each step, read back after a restart."""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import SecretStr
from sqlalchemy import ColumnElement, and_, func, literal_column, or_, select, true, update

from bot.crypto import DecryptionError, KeyBox
from bot.jobs.models import Destination, Job, JobKind, JobState, aware
from bot.store.db import Store
from bot.store.models import JobRow, utcnow


class JobNotFound(LookupError):
    """No job row with that id (it finished long ago and was forgotten, or never was)."""


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """The shared queue as the store has it now, for :mod:`bot.jobs.fairness`.

    ``waiting``: (member, job id) of queued jobs of this process's shards nobody holds,
    oldest first; ``running``: per member, jobs some live process holds a slot for;
    ``served``: per member, when one of their jobs last started (any process).
    """

    waiting: tuple[tuple[int, str], ...]
    running: dict[int, int]
    served: dict[int, datetime]


@dataclass(frozen=True, slots=True)
class InDoubt:
    """A post begun by a process that died (or lost its claim) before recording it."""

    via: Destination
    started_at: datetime


@dataclass(frozen=True, slots=True)
class ShardScope:
    """The shards one bot process runs, of ``count`` in all: it claims only the jobs of
    guilds on them, and DMs when it runs shard 0 (where Discord sends them).

    Discord puts a guild on shard ``(guild_id >> 22) % count``; that shard's process has
    the guild's commands, its cache (channels, permissions, upload limit) and its voice
    connection, so it is the one to run and post the guild's jobs. Another process could
    post through REST, but without the cache it would post blind (default file limit, no
    permission check) and could not play speech in a voice channel.
    """

    count: int
    ids: frozenset[int]

    def condition(self) -> ColumnElement[bool]:
        """The jobs of this process's shards, as SQL (SQLite and PostgreSQL have both
        ``>>`` and ``%``)."""
        # An inline 22: PostgreSQL has ``bigint >> integer`` but no ``bigint >> bigint``.
        shard = JobRow.guild_id.op(">>")(literal_column("22")) % self.count
        in_guild = and_(JobRow.guild_id.is_not(None), shard.in_(sorted(self.ids)))
        return or_(JobRow.guild_id.is_(None), in_guild) if 0 in self.ids else in_guild


def free_or_mine(owner: str, now: datetime) -> ColumnElement[bool]:
    """Rows ``owner`` may claim: unclaimed, claimed by itself (an earlier life), or whose
    claim's lease has run out (its process died or hung)."""
    return or_(
        JobRow.claimed_by.is_(None),
        JobRow.claimed_by == owner,
        JobRow.lease_until < now,
    )


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


class JobStore:
    """Reads and writes ``bot_jobs``; a shared key lent to a job and the job's interaction
    token are kept encrypted."""

    def __init__(self, store: Store, keys: KeyBox, *, shards: ShardScope | None = None) -> None:
        self._store = store
        self._keys = keys
        # Claims are limited to the jobs of this process's shards (None: it runs them all).
        self._mine = shards.condition() if shards is not None else true()
        # One writer at a time: SQLite fails (rather than waits) when two connections'
        # read-then-write transactions cross, and hundreds of jobs update at once.
        self._writes = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<JobStore {self._store!r}>"

    async def create(
        self,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        kind: JobKind,
        params: dict[str, Any],
        private: bool = False,
        shared_key: SecretStr | None = None,
        application_id: int | None = None,
        interaction_token: SecretStr | None = None,
        interaction_at: datetime | None = None,
    ) -> Job:
        """Save a new QUEUED job and return it."""
        now = utcnow()
        row = JobRow(
            id=secrets.token_hex(16),
            discord_user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            kind=kind.value,
            state=JobState.QUEUED.value,
            params=json.dumps(params),
            private=private,
            shared_key_encrypted=self._keys.encrypt(shared_key) if shared_key else None,
            application_id=application_id,
            interaction_token_encrypted=(
                self._keys.encrypt(interaction_token) if interaction_token else None
            ),
            interaction_at=interaction_at if interaction_token else None,
            post_attempts=0,
            created_at=now,
            updated_at=now,
        )
        async with self._writes, self._store.session() as session:
            session.add(row)
            await session.commit()
        return Job.of(row)

    async def get(self, job_id: str) -> Job:
        """The job, or :class:`JobNotFound`."""
        async with self._store.session() as session:
            row = await session.get(JobRow, job_id)
        if row is None:
            raise JobNotFound(job_id)
        return Job.of(row)

    async def shared_key(self, job_id: str) -> SecretStr | None:
        """The shared key lent to this job, decrypted (``None`` when it uses the member's)."""
        async with self._store.session() as session:
            row = await session.get(JobRow, job_id)
        if row is None or row.shared_key_encrypted is None:
            return None
        return self._keys.decrypt(row.shared_key_encrypted)

    async def interaction_token(self, job_id: str) -> tuple[int, SecretStr, datetime] | None:
        """``(application_id, token, issued_at)`` while a token is kept for the job (and
        can still be decrypted: a key dropped from the box loses it, the job is posted in
        its channel instead)."""
        async with self._store.session() as session:
            row = await session.get(JobRow, job_id)
        if row is None or not row.interaction_token_encrypted or row.application_id is None:
            return None
        assert row.interaction_at is not None
        try:
            token = self._keys.decrypt(row.interaction_token_encrypted)
        except DecryptionError:
            return None
        return row.application_id, token, row.interaction_at

    async def claimed(self, tada_ids: set[str], *, besides: str) -> set[str]:
        """Those of ``tada_ids`` another job than ``besides`` already holds as its result."""
        if not tada_ids:
            return set()
        async with self._store.session() as session:
            held = await session.scalars(
                select(JobRow.tada_id).where(JobRow.tada_id.in_(tada_ids), JobRow.id != besides)
            )
            return {tada_id for tada_id in held if tada_id is not None}

    async def update(self, job_id: str, **values: Any) -> Job:
        """Set columns (``params``/``result`` as dicts, enums as themselves); returns the job."""
        async with self._writes, self._store.session() as session:
            row = await session.get(JobRow, job_id)
            if row is None:
                raise JobNotFound(job_id)
            for name, value in values.items():
                if name in ("params", "result") and value is not None:
                    value = json.dumps(value)
                elif isinstance(value, JobState | JobKind | Destination):
                    value = value.value
                setattr(row, name, value)
            row.updated_at = utcnow()
            await session.commit()
        return Job.of(row)

    async def mark_posted(self, job_id: str, *, message_id: int | None, via: Destination) -> bool:
        """Record a delivery once; ``False`` when the job was already posted (never twice).

        One conditional update (``posted_via IS NULL``), so of two processes recording a
        delivery of the same job exactly one succeeds. The claim ends with it.
        """
        now = utcnow()
        async with self._writes, self._store.session() as session:
            result = await session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.posted_via.is_(None))
                .values(
                    result_message_id=message_id,
                    posted_via=via.value,
                    posted_at=now,
                    # The token is useless after this and is a credential until it expires.
                    interaction_token_encrypted=None,
                    claimed_by=None,
                    lease_until=None,
                    updated_at=now,
                )
            )
            await session.commit()
        return _rowcount(result) == 1

    # ------------------------------------------------------------------ claims

    async def claim(
        self, job_id: str, owner: str, *, lease: timedelta, queued_only: bool = False
    ) -> bool:
        """Take the job for ``owner`` until ``now + lease``; ``False`` when another live
        process holds it (or it is posted, or with ``queued_only`` no longer queued).

        A single conditional ``UPDATE``: two processes claiming at once cannot both win,
        on SQLite (one writer at a time) as on PostgreSQL (the row lock, then the
        condition re-checked against the committed row).
        """
        now = utcnow()
        conditions = [
            JobRow.id == job_id,
            JobRow.posted_via.is_(None),
            free_or_mine(owner, now),
            self._mine,
        ]
        if queued_only:
            conditions.append(JobRow.state == JobState.QUEUED.value)
        async with self._writes, self._store.session() as session:
            result = await session.execute(
                update(JobRow).where(*conditions).values(claimed_by=owner, lease_until=now + lease)
            )
            await session.commit()
        return _rowcount(result) == 1

    async def renew(self, owner: str, job_ids: set[str], *, lease: timedelta) -> set[str]:
        """Extend ``owner``'s claims on ``job_ids``; the ids it still holds."""
        if not job_ids:
            return set()
        now = utcnow()
        async with self._writes, self._store.session() as session:
            await session.execute(
                update(JobRow)
                .where(JobRow.id.in_(job_ids), JobRow.claimed_by == owner)
                .values(lease_until=now + lease)
            )
            await session.commit()
            held = await session.scalars(
                select(JobRow.id).where(JobRow.id.in_(job_ids), JobRow.claimed_by == owner)
            )
            return set(held)

    async def release(self, job_id: str, owner: str) -> None:
        """Give up ``owner``'s claim (the job goes back to whoever claims it next)."""
        async with self._writes, self._store.session() as session:
            await session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.claimed_by == owner)
                .values(claimed_by=None, lease_until=None)
            )
            await session.commit()

    async def release_all(self, owner: str, job_ids: set[str]) -> None:
        """Give up ``owner``'s claims on ``job_ids`` (the process stops)."""
        if not job_ids:
            return
        async with self._writes, self._store.session() as session:
            await session.execute(
                update(JobRow)
                .where(JobRow.id.in_(job_ids), JobRow.claimed_by == owner)
                .values(claimed_by=None, lease_until=None)
            )
            await session.commit()

    async def release_queued(self, owner: str) -> None:
        """Give up ``owner``'s claims on jobs that never started (an earlier life of this
        process claimed them; at start nothing runs here yet): back in the shared queue."""
        async with self._writes, self._store.session() as session:
            await session.execute(
                update(JobRow)
                .where(JobRow.claimed_by == owner, JobRow.state == JobState.QUEUED.value)
                .values(claimed_by=None, lease_until=None)
            )
            await session.commit()

    async def holds(self, job_id: str, owner: str) -> bool:
        """Whether ``owner`` holds an unexpired claim on the job."""
        async with self._store.session() as session:
            found = await session.scalar(
                select(JobRow.id).where(
                    JobRow.id == job_id, JobRow.claimed_by == owner, JobRow.lease_until >= utcnow()
                )
            )
        return found is not None

    async def takeable(self, owner: str) -> list[Job]:
        """Unposted jobs ``owner`` may claim (see :func:`free_or_mine`), oldest first."""
        async with self._store.session() as session:
            rows = (
                await session.scalars(
                    select(JobRow)
                    .where(JobRow.posted_via.is_(None), free_or_mine(owner, utcnow()), self._mine)
                    .order_by(JobRow.created_at, JobRow.id)
                )
            ).all()
        return [Job.of(row) for row in rows]

    async def begin_post(self, job_id: str, owner: str, via: Destination) -> InDoubt | None:
        """Note that ``owner`` is about to post the job's result to ``via``, if it still
        holds the claim and nobody recorded a post; raises :class:`JobNotFound` when it
        may not post (another process took the job over, or it is posted). Returns the
        earlier attempt still in doubt, if one was begun and never recorded."""
        now = utcnow()
        async with self._writes, self._store.session() as session:
            before = (
                await session.execute(
                    select(JobRow.post_started_at, JobRow.post_attempt_via).where(
                        JobRow.id == job_id
                    )
                )
            ).first()
            result = await session.execute(
                update(JobRow)
                .where(
                    JobRow.id == job_id,
                    JobRow.posted_via.is_(None),
                    JobRow.claimed_by == owner,
                    JobRow.lease_until >= now,
                )
                .values(post_started_at=now, post_attempt_via=via.value)
            )
            await session.commit()
        if _rowcount(result) != 1:
            raise JobNotFound(job_id)
        if before is None or before[0] is None or before[1] is None:
            return None
        return InDoubt(Destination(before[1]), aware(before[0]))

    async def end_attempt(self, job_id: str, owner: str) -> None:
        """The post begun by ``owner`` was refused by Discord: no longer in doubt."""
        async with self._writes, self._store.session() as session:
            await session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.claimed_by == owner)
                .values(post_started_at=None, post_attempt_via=None)
            )
            await session.commit()

    async def in_doubt(self, job_id: str) -> InDoubt | None:
        """The post begun and never recorded, if any (a process died in between)."""
        async with self._store.session() as session:
            row = await session.get(JobRow, job_id)
        if row is None or row.posted_via is not None or row.post_started_at is None:
            return None
        if row.post_attempt_via is None:
            return None
        return InDoubt(Destination(row.post_attempt_via), aware(row.post_started_at))

    async def cancel_queued(self, job_id: str, owner: str, *, lease: timedelta) -> bool:
        """Claim a queued job nobody is running, so that it can be cancelled."""
        return await self.claim(job_id, owner, lease=lease, queued_only=True)

    async def queue_snapshot(self) -> QueueSnapshot:
        """The shared queue now (see :class:`QueueSnapshot`)."""
        now = utcnow()
        live = and_(JobRow.claimed_by.is_not(None), JobRow.lease_until >= now)
        async with self._store.session() as session:
            waiting = (
                await session.execute(
                    select(JobRow.discord_user_id, JobRow.id)
                    .where(
                        JobRow.posted_via.is_(None),
                        JobRow.state == JobState.QUEUED.value,
                        ~live,
                        self._mine,
                    )
                    .order_by(JobRow.created_at, JobRow.id)
                )
            ).all()
            # A slot is held by a claimed queued job (about to run) or a running
            # generation; a training being watched holds none.
            busy = (
                await session.execute(
                    select(JobRow.discord_user_id, func.count(JobRow.id))
                    .where(
                        JobRow.posted_via.is_(None),
                        live,
                        or_(
                            JobRow.state == JobState.QUEUED.value,
                            and_(
                                JobRow.state == JobState.RUNNING.value,
                                JobRow.kind != JobKind.LORA_TRAIN.value,
                            ),
                        ),
                    )
                    .group_by(JobRow.discord_user_id)
                )
            ).all()
            members = {int(m) for m, _ in waiting}
            served = (
                (
                    await session.execute(
                        select(JobRow.discord_user_id, func.max(JobRow.started_at))
                        .where(JobRow.discord_user_id.in_(members), JobRow.started_at.is_not(None))
                        .group_by(JobRow.discord_user_id)
                    )
                ).all()
                if members
                else []
            )
        return QueueSnapshot(
            waiting=tuple((int(m), str(j)) for m, j in waiting),
            running={int(m): int(n) for m, n in busy},
            served={int(m): aware(t) for m, t in served if t is not None},
        )

    async def count_attempt(self, job_id: str) -> int:
        """One more posting attempt; returns the count."""
        async with self._writes, self._store.session() as session:
            row = await session.get(JobRow, job_id)
            if row is None:
                raise JobNotFound(job_id)
            row.post_attempts += 1
            await session.commit()
            return row.post_attempts

    async def unfinished(self) -> list[Job]:
        """Jobs a restart must pick up: not final, or final and not posted yet."""
        async with self._store.session() as session:
            rows = (
                await session.scalars(
                    select(JobRow)
                    .where(JobRow.posted_via.is_(None))
                    .order_by(JobRow.created_at, JobRow.id)
                )
            ).all()
        return [Job.of(row) for row in rows]

    async def for_member(self, user_id: int, *, limit: int = 20) -> list[Job]:
        """A member's latest jobs, newest first."""
        async with self._store.session() as session:
            rows = (
                await session.scalars(
                    select(JobRow)
                    .where(JobRow.discord_user_id == user_id)
                    .order_by(JobRow.created_at.desc())
                    .limit(limit)
                )
            ).all()
        return [Job.of(row) for row in rows]
