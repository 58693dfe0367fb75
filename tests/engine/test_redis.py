"""The engine on a real Redis: the job queue (huey's Redis storage) and shared rate limits."""

from __future__ import annotations

from pathlib import Path

import httpx

from engine.jobs import JobQueue, build_huey
from engine.settings import JobSettings
from tests.conftest import RELAXED_LIMITS, make_settings, running_engine


def redis_jobs(url: str) -> JobSettings:
    return JobSettings(backend="redis", redis_url=url, in_process_workers=0)


def test_a_job_id_enqueued_by_one_process_is_run_by_another(tmp_path: Path, redis_url: str) -> None:
    """Two huey instances over one Redis: what the API side enqueues, the worker side runs."""
    settings = make_settings(tmp_path / "engine", jobs=redis_jobs(redis_url))
    api_side, worker_side = JobQueue(build_huey(settings)), JobQueue(build_huey(settings))
    ran: list[str] = []
    worker_side.bind(ran.append)
    try:
        for job_id in ("a", "b", "c"):
            api_side.enqueue(job_id)
        assert api_side.pending() == worker_side.pending() == 3
        assert not (tmp_path / "engine" / "queue.sqlite3").exists()  # nothing on local disk
        while worker_side.run_one():
            pass
        assert ran == ["a", "b", "c"]
        assert api_side.pending() == 0
    finally:
        api_side.close()
        worker_side.close()


async def test_two_api_processes_over_one_redis_count_one_limit(
    tmp_path: Path, redis_url: str
) -> None:
    """Registration is limited per client across every API process sharing the Redis."""
    limits = RELAXED_LIMITS.model_copy(
        update={"storage_uri": redis_url, "register_per_client": "3/minute"}
    )
    first = make_settings(tmp_path / "a", limits=limits)
    second = make_settings(tmp_path / "b", limits=limits)
    async with running_engine(first) as (app_a, api_a), running_engine(second) as (_, api_b):
        codes = []
        for i, api in enumerate([api_a, api_b, api_a, api_b]):
            resp = await api.post("/api/users/register", params={"email": f"r{i}@example.com"})
            codes.append(resp.status_code)
        assert codes == [200, 200, 200, 429]
        refused = await api_b.post("/api/users/register", params={"email": "r9@example.com"})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        # Another client's count is its own, on either process.
        other = httpx.ASGITransport(app=app_a, client=("10.1.2.3", 1))
        async with httpx.AsyncClient(transport=other, base_url="http://t") as c:
            resp = await c.post("/api/users/register", params={"email": "o@example.com"})
            assert resp.status_code == 200, resp.text
