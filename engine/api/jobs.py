"""Jobs a request waits for: upstream answers clones and generations synchronously."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from sqlalchemy.ext.asyncio import AsyncSession

from engine.jobs import JobTimeout
from engine.models import Job
from engine.services import EngineServices


async def submit_and_wait(
    services: EngineServices,
    session: AsyncSession,
    kind: str,
    payload: dict[str, Any],
    user_id: str,
    *,
    still_running: str,
) -> Job:
    """Queue a job and wait until it is final; past the configured wait, 504.

    ``still_running`` is the 504's ``detail`` (``{job_id}`` names the job in it): tell the
    caller where the result will appear, since the job goes on without them.
    """
    # Give the connection back while the job runs: waiters must not starve the pool.
    await session.commit()
    job = await services.jobs.submit(kind, payload, user_id)
    try:
        return await services.jobs.wait(job.id, within=services.settings.jobs.wait_timeout_seconds)
    except JobTimeout as exc:
        raise HTTPException(504, still_running.format(job_id=job.id)) from exc
