"""The async side of jobs, used by API routes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio.to_thread
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from engine.jobs.queue import JobQueue
from engine.models import Job, JobStatus, utcnow


class JobTimeout(Exception):
    """The job did not finish within the wait; it keeps running."""


class JobService:
    """Create, read, wait for and cancel jobs."""

    def __init__(
        self, *, sessions: async_sessionmaker[AsyncSession], queue: JobQueue, max_attempts: int
    ) -> None:
        self.sessions = sessions
        self.queue = queue
        self.max_attempts = max_attempts

    async def submit(self, kind: str, payload: dict[str, Any], user_id: str | None = None) -> Job:
        """Record a job, then enqueue it. The row exists before any worker can see the id."""
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
            s.add(job)
        await anyio.to_thread.run_sync(self.queue.enqueue, job.id)
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
