"""Many members waiting at once on synchronous endpoints do not starve the database pool.

The contract makes cloning and generating synchronous: the request waits while a worker
does the job. Found by ``bench/load.py``: each waiting request used to keep its database
connection checked out for the whole wait, so more waiters than the pool holds (15)
starved everyone, including the polls that would have ended the waits, and answered 500
after SQLAlchemy's 30 s pool timeout. Here no worker runs, so every wait lasts until the
engine's wait timeout: each of the 40 requests must get the engine's own 504 ("still
working, it will appear in ..."), never a 500.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import func, select

from engine.models import Job
from engine.settings import JobSettings
from tests.conftest import make_settings, register, running_engine, services_of

WAITERS = 40


async def test_forty_concurrent_waits_end_in_the_engines_own_504(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "engine", jobs=JobSettings(in_process_workers=0, wait_timeout_seconds=3)
    )
    async with running_engine(settings) as (app, api):
        key = {"X-API-Key": await register(api)}
        uploads = []
        for n in range(WAITERS):
            target = (
                await api.post(
                    "/api/voices/uploads/url",
                    params={"name": f"v{n}", "file_name": "v.wav"},
                    headers=key,
                )
            ).json()
            parts = urlsplit(target["upload_url"])
            put = await api.put(
                f"{parts.path}?{parts.query}",
                content=b"RIFF" + b"\0" * 64,
                headers=target["headers"],
            )
            assert put.status_code == 200
            uploads.append(target["id"])

        answers = await asyncio.gather(
            *(
                api.post("/api/voices/uploads", params={"upload_id": u}, headers=key)
                for u in uploads
            )
        )

        statuses = sorted(a.status_code for a in answers)
        assert statuses == [504] * WAITERS, [a.text[:200] for a in answers if a.status_code != 504]
        assert all("still cloning" in a.json()["detail"] for a in answers)
        async with services_of(app).db.session() as s:
            assert await s.scalar(select(func.count()).select_from(Job)) == WAITERS
