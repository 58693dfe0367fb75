"""The engine past one process: two API processes and two workers over PostgreSQL and Redis;
members submit speech and image jobs through HTTP while one worker is SIGKILLed and started
again. Target: every job finished, none lost, none done twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.bot.media_samples import speech_wav
from tests.scale.cluster import STALE_AFTER_SECONDS, Cluster, cluster, run_members, short_sample

MEMBERS = 12  # bench/scale.py runs 200
KILL_AFTER_DONE = 8  # jobs finished before the SIGKILL: the run is under way


async def _wait_jobs_done(c: Cluster, at_least: int, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        [(done,)] = await asyncio.to_thread(
            c.query, "SELECT count(*) FROM jobs WHERE status = 'succeeded'"
        )
        if done >= at_least:
            return
        assert time.monotonic() < deadline, f"only {done} jobs finished"
        await asyncio.sleep(0.2)


async def test_members_through_two_apis_and_two_workers_one_killed_lose_nothing(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    sample = short_sample(await speech_wav())
    with cluster(tmp_path / "cluster", database_url=postgres_url, redis_url=redis_url) as c:
        members = asyncio.create_task(run_members(c.bases, MEMBERS, sample))
        await _wait_jobs_done(c, KILL_AFTER_DONE, within=120)
        victim = c.workers[0]
        # Killed while it holds jobs: the claim is in the database, the message is gone.
        busy = await asyncio.to_thread(
            c.query, "SELECT count(*) FROM jobs WHERE status IN ('queued', 'processing')"
        )
        victim.kill()
        await asyncio.sleep(STALE_AFTER_SECONDS / 3)
        victim.start()
        runs = await asyncio.wait_for(members, timeout=300)
        await asyncio.to_thread(c.wait_worker, victim)
        logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in [*c.workers, *c.apis])

        failed = [(r.email, r.errors) for r in runs if r.errors]
        assert not failed, (failed[:5], logs)
        assert busy[0][0] > 0, "the worker was killed after the run, not during it"
        # The database's truth: each member's three jobs, each finished once.
        jobs = c.query("SELECT kind, status, count(*) FROM jobs GROUP BY kind, status")
        assert sorted(jobs) == sorted(
            [
                ("voice.clone", "succeeded", MEMBERS),
                ("voice.generate", "succeeded", MEMBERS),
                ("image.generate", "succeeded", MEMBERS),
            ]
        ), (jobs, logs)
        # Nothing done twice: one voice, one speech and one image per member, each the
        # one the member was answered with.
        for table, column in (
            ("voices", "id"),
            ("voice_generations", "id"),
            ("lora_generations", "id"),
        ):
            rows = c.query(f"SELECT user_id, {column} FROM {table}")
            assert len(rows) == MEMBERS, (table, len(rows))
            assert len({user for user, _ in rows}) == MEMBERS, table
        answered = {r.speech_id for r in runs} | {r.image_id for r in runs}
        stored = {str(i) for (_, i) in c.query("SELECT user_id, id FROM voice_generations")}
        stored |= {str(i) for (_, i) in c.query("SELECT user_id, id FROM lora_generations")}
        assert answered == stored
        # The killed worker's jobs were taken back by the other and run again.
        [(retried,)] = c.query("SELECT count(*) FROM jobs WHERE attempts > 1")
        assert victim.starts == 2 and all(p.alive for p in [*c.workers, *c.apis])
        print(f"scale: {MEMBERS} members, {3 * MEMBERS} jobs, {retried} retried after the kill")
