"""Jobs a request waits for: upstream answers clones and generations synchronously."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from engine.jobs import submit_and_wait as _submit_and_wait
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
    """Queue a job and wait the configured time until it is final; past it, 504
    (:class:`engine.errors.StillRunning`, mapped in :mod:`engine.api.errors`).

    ``still_running`` is the 504's ``detail`` (``{job_id}`` names the job in it).
    """
    return await _submit_and_wait(
        services.jobs,
        session,
        kind,
        payload,
        user_id,
        within=services.settings.jobs.wait_timeout_seconds,
        still_running=still_running,
    )
