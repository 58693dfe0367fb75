"""Bot fixtures: the real composition root over the real engine, in-process, in SimCord."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from bot.app import BotServices, TadaBot, create_bot, open_services
from bot.config import BotConfig
from bot.jobs import JobKind, JobRunner, JobState
from bot.store.models import utcnow

ENGINE_URL = "http://testserver"
SINGLE_PROCESS_JOBS = {"sweep_seconds": 3600.0, "lease_seconds": 7200.0}


def make_bot_config(data_dir: Path, **overrides: object) -> BotConfig:
    """Bot config for tests: development mode (key file generated), data in ``data_dir``."""
    values: dict[str, object] = {"data_dir": data_dir}
    values.update(overrides)
    # One bot process per test: the claim sweep (for other processes' jobs) would only
    # run per simulated interval when a test moves SimCord's clock by hours.
    jobs = overrides.get("jobs") or {}
    assert isinstance(jobs, dict)
    values["jobs"] = {**SINGLE_PROCESS_JOBS, **jobs}
    return BotConfig.model_validate(values)


@pytest.fixture
def bot_config(tmp_path: Path) -> BotConfig:
    return make_bot_config(tmp_path / "bot")


@pytest.fixture
async def services(
    bot_config: BotConfig, engine: tuple[FastAPI, httpx.AsyncClient]
) -> AsyncIterator[BotServices]:
    """Services built by the composition root, talking to the engine through ASGITransport."""
    _, api = engine
    async with open_services(bot_config, http=api, base_url=ENGINE_URL) as built:
        yield built


@pytest.fixture
def simcord_bot(services: BotServices) -> TadaBot:
    return create_bot(services)


async def busy_job(runner: JobRunner, member: int, *, state: JobState = JobState.RUNNING) -> str:
    """A job of ``member`` that another (live) bot process holds: it takes one of the
    member's slots in the shared queue."""
    job = await runner.store.create(
        user_id=member, guild_id=None, channel_id=None, kind=JobKind.DEMO_GENERATE, params={}
    )
    assert await runner.store.claim(job.id, "another-process", lease=timedelta(minutes=5))
    await runner.store.update(job.id, state=state, started_at=utcnow())
    return job.id
