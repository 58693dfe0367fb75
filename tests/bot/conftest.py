"""Bot fixtures: the real composition root over the real engine, in-process, in SimCord."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import simcord
from fastapi import FastAPI

from bot.app import BotServices, TadaBot, create_bot, open_services
from bot.config import BotConfig
from bot.jobs import JobKind, JobRunner, JobState
from bot.store.models import utcnow
from tests.conftest import database_backend
from tests.servers import PostgresServer

ENGINE_URL = "http://testserver"
# The current test's bot store in the PostgreSQL pass (set by the bot_database fixture).
BOT_DATABASE_URL_ENV = "TADA_TEST_BOT_DATABASE_URL"
SINGLE_PROCESS_JOBS = {"sweep_seconds": 3600.0, "lease_seconds": 7200.0}


def make_bot_config(data_dir: Path, **overrides: object) -> BotConfig:
    """Bot config for tests: development mode (key file generated), data in ``data_dir``."""
    values: dict[str, object] = {"data_dir": data_dir}
    if os.environ.get(BOT_DATABASE_URL_ENV):
        values["store"] = {"database_url": os.environ[BOT_DATABASE_URL_ENV]}
    values.update(overrides)
    # One bot process per test: the claim sweep (for other processes' jobs) would only
    # run per simulated interval when a test moves SimCord's clock by hours.
    jobs = overrides.get("jobs") or {}
    assert isinstance(jobs, dict)
    values["jobs"] = {**SINGLE_PROCESS_JOBS, **jobs}
    return BotConfig.model_validate(values)


@pytest.fixture
def bot_store_url(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A bot store of its own for the test: a SQLite file, or with ``TADA_TEST_DB=postgres``
    (the PostgreSQL pass) a fresh database on the session's real PostgreSQL."""
    if database_backend() != "postgres":
        yield f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = f"bot_{uuid.uuid4().hex[:16]}"
    url = server.create_database(name)
    yield url
    server.drop_database(name)


@pytest.fixture(autouse=True)
def bot_database(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str | None]:
    """In the PostgreSQL pass: the bot store of every config :func:`make_bot_config`
    builds in this test is a fresh PostgreSQL database (a SQLite file otherwise)."""
    if database_backend() != "postgres":
        yield None
        return
    url: str = request.getfixturevalue("bot_store_url")
    monkeypatch.setenv(BOT_DATABASE_URL_ENV, url)
    yield url


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


async def synced_payload(config: BotConfig, api: httpx.AsyncClient) -> list[dict[str, Any]]:
    """The commands the bot syncs at start-up, as discord.py sends them (SimCord's PUT)."""
    async with open_services(config, http=api, base_url=ENGINE_URL) as services:
        env = simcord.Env(create_bot(services))
        await env.start()
        try:
            [put] = [r for r in env.http_requests if r.method == "PUT"]
        finally:
            await env.shutdown()
    assert isinstance(put.json, list)
    return put.json
