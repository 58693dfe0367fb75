"""The async side of jobs, used by API routes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio.to_thread
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from engine.db import lock_member
from engine.errors import StillRunning
from engine.jobs.queue import JobQueue
from engine.models import Job, JobStatus, utcnow


class JobTimeout(Exception):
    """The job did not finish within the wait; it keeps running."""


class TooManyPendingJobs(Exception):
    """The member already has as many jobs queued or running as they may."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"you have {limit} job(s) queued or running; wait for one to finish, then try again"
        )
        self.limit = limit


class JobService:
    """Create, read, wait for and cancel jobs."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        queue: JobQueue,
        max_attempts: int,
        max_pending_per_user: int | None = None,
    ) -> None:
        self.sessions = sessions
        self.queue = queue
        self.max_attempts = max_attempts
        self.max_pending_per_user = max_pending_per_user

    async def submit(self, kind: str, payload: dict[str, Any], user_id: str | None = None) -> Job:
        """Record a job, then enqueue it. The row exists before any worker can see the id.

        A member (``user_id``) with ``max_pending_per_user`` jobs queued or running gets
        :class:`TooManyPendingJobs`: one member cannot fill the queue ahead of everyone.
        """
        job = Job(
            kind=kind,
            user_id=user_id,
            payload=payload,
            status=JobStatus.QUEUED.value,
            progress=0,
            attempts=0,
            max_attempts=self.max_attempts,
        )
        async with self.sessions.begin() as s:
            if user_id is not None and self.max_pending_per_user is not None:
                # Count and insert as one unit: simultaneous submissions wait their turn.
                await lock_member(s, user_id)
                pending = await s.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(
                        Job.user_id == user_id,
                        Job.status.in_([JobStatus.QUEUED.value, JobStatus.PROCESSING.value]),
                    )
                )
                if (pending or 0) >= self.max_pending_per_user:
                    raise TooManyPendingJobs(self.max_pending_per_user)
            s.add(job)
        await anyio.to_thread.run_sync(self.queue.enqueue, job.id, job.kind)
        return job

    async def get(self, job_id: str) -> Job | None:
        async with self.sessions() as s:
            return await s.get(Job, job_id)

    async def wait(self, job_id: str, within: float) -> Job:
        """Poll until the job is final; raise :class:`JobTimeout` after ``within`` seconds."""
        deadline = time.monotonic() + within
        delay = 0.02
        while True:
            job = await self.get(job_id)
            if job is None:
                raise KeyError(job_id)
            if JobStatus(job.status).is_final:
                return job
            if time.monotonic() >= deadline:
                raise JobTimeout(job_id)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job that has not finished; False when it already had."""
        async with self.sessions.begin() as s:
            res = await s.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.status.in_([JobStatus.QUEUED.value, JobStatus.PROCESSING.value]),
                )
                .values(status=JobStatus.CANCELED.value, finished_at=utcnow())
            )
        return bool(res.rowcount)  # type: ignore[attr-defined]


async def submit_and_wait(
    jobs: JobService,
    session: AsyncSession,
    kind: str,
    payload: dict[str, Any],
    user_id: str,
    *,
    within: float,
    still_running: str,
) -> Job:
    """Queue a job and wait until it is final; past ``within`` seconds, :class:`StillRunning`.

    ``still_running`` is the error's ``detail`` (``{job_id}`` names the job in it): tell the
    caller where the result will appear, since the job goes on without them.
    """
    # Give the connection back while the job runs: waiters must not starve the pool.
    await session.commit()
    job = await jobs.submit(kind, payload, user_id)
    try:
        return await jobs.wait(job.id, within=within)
    except JobTimeout as exc:
        raise StillRunning(still_running.format(job_id=job.id), job.id) from exc
