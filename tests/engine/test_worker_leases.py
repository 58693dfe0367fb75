"""Several workers over one PostgreSQL and one Redis: a job is run by one worker at a time.

A worker that starts (or looks for stranded work) takes back only the jobs whose worker
stopped beating: a job another live worker is running is left to it, and a job whose
worker died is re-queued and finishes, once.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import anyio.to_thread
import pytest
from sqlalchemy import update

from engine.jobs import Handler, JobContext
from engine.models import Job, JobStatus, utcnow
from engine.services import EngineServices, build_services
from engine.settings import EngineSettings, JobSettings
from tests.conftest import make_settings
from tests.waiting import async_wait_until, polls

KIND = "test.hold"
WorkerFactory = Callable[[dict[str, Handler]], EngineServices]


def lease_settings(tmp_path: Path, postgres_url: str, redis_url: str) -> EngineSettings:
    return make_settings(
        tmp_path / "engine",
        database_url=postgres_url,
        jobs=JobSettings(
            backend="redis",
            redis_url=redis_url,
            in_process_workers=0,
            heartbeat_seconds=0.2,
            stale_after_seconds=1.0,
        ),
    )


@pytest.fixture
async def workers(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> AsyncIterator[WorkerFactory]:
    """Build worker processes' services (each its own engines, pools and huey client)."""
    settings = lease_settings(tmp_path, postgres_url, redis_url)
    built: list[EngineServices] = []

    def build(handlers: dict[str, Handler]) -> EngineServices:
        services = build_services(settings, handlers=handlers)
        built.append(services)
        return services

    yield build
    for services in built:
        services.worker.stop_heartbeat()
        await services.close()


def holding_handler(calls: list[int], release: threading.Event) -> Handler:
    def run(ctx: JobContext) -> dict[str, int]:
        calls.append(ctx.attempt)
        assert release.wait(30), "the test never released the job"
        return {"attempt": ctx.attempt}

    return run


async def submit(services: EngineServices) -> str:
    await anyio.to_thread.run_sync(services.db.migrate)
    job = await services.jobs.submit(KIND, {})
    return job.id


async def status_of(services: EngineServices, job_id: str) -> Job:
    job = await services.jobs.get(job_id)
    assert job is not None
    return job


async def test_a_worker_starting_leaves_a_job_another_live_worker_runs(
    workers: WorkerFactory,
) -> None:
    calls: list[int] = []
    release = threading.Event()
    first = workers({KIND: holding_handler(calls, release)})
    second = workers({KIND: holding_handler(calls, release)})
    job_id = await submit(first)
    first.worker.start_heartbeat()
    running = threading.Thread(target=first.queue.run_one)
    running.start()
    try:
        for _ in polls():
            if calls:
                break
            await anyio.sleep(0.02)
        assert calls == [1]
        # Longer than stale_after: only the first worker's heartbeat keeps the job its own.
        await anyio.sleep(1.5)
        assert await anyio.to_thread.run_sync(second.worker.recover) == (0, 0)
        assert (await status_of(first, job_id)).status == JobStatus.PROCESSING.value
        assert second.queue.pending() == 0  # no second message: nobody else will run it
    finally:
        release.set()
        await anyio.to_thread.run_sync(running.join, 30)
    done = await status_of(first, job_id)
    assert done.status == JobStatus.SUCCEEDED.value and done.result == {"attempt": 1}
    assert calls == [1]


async def test_the_job_of_a_worker_that_died_is_taken_back_and_finishes_once(
    workers: WorkerFactory,
) -> None:
    calls: list[int] = []
    release = threading.Event()
    release.set()
    survivor = workers({KIND: holding_handler(calls, release)})
    job_id = await submit(survivor)
    # As a worker killed mid-run leaves it: its message taken, the row claimed, its last
    # heartbeat long ago.
    assert await anyio.to_thread.run_sync(survivor.queue.huey.dequeue) is not None
    async with survivor.db.session.begin() as s:
        await s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JobStatus.PROCESSING.value,
                attempts=1,
                heartbeat_at=utcnow() - timedelta(minutes=5),
            )
        )
    survivor.worker.start_heartbeat()  # its reaper takes stale jobs back on its own
    await async_wait_until(survivor.queue.pending, "the reaper re-queues the stale job")
    assert await anyio.to_thread.run_sync(survivor.worker.drain) == 1
    done = await status_of(survivor, job_id)
    assert done.status == JobStatus.SUCCEEDED.value and done.result == {"attempt": 2}
    assert calls == [2]
