"""Job rows: written before any Ta-da call, updated at each step, read back after a restart."""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import datetime
from typing import Any

from pydantic import SecretStr
from sqlalchemy import select

from bot.crypto import DecryptionError, KeyBox
from bot.jobs.models import Destination, Job, JobKind, JobState
from bot.store.db import Store
from bot.store.models import JobRow, utcnow


class JobNotFound(LookupError):
    """No job row with that id (it finished long ago and was forgotten, or never was)."""


class JobStore:
    """Reads and writes ``bot_jobs``; a shared key lent to a job and the job's interaction
    token are kept encrypted."""

    def __init__(self, store: Store, keys: KeyBox) -> None:
        self._store = store
        self._keys = keys
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
        """Record a delivery once; ``False`` when the job was already posted (never twice)."""
        async with self._writes, self._store.session() as session:
            row = await session.get(JobRow, job_id)
            if row is None or row.posted_via is not None:
                return False
            row.result_message_id = message_id
            row.posted_via = via.value
            row.posted_at = utcnow()
            # The token is useless after this and is a credential until it expires.
            row.interaction_token_encrypted = None
            row.updated_at = utcnow()
            await session.commit()
        return True

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
