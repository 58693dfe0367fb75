"""Shared fixtures: the real engine app on a temporary SQLite file, driven in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from engine.app import create_app
from engine.jobs import Handler
from engine.services import EngineServices
from engine.settings import EngineSettings, JobSettings, LimitSettings

RELAXED_LIMITS = LimitSettings(
    register_per_client="",
    register_global="",
    requests_per_client="",
    max_pending_uploads=100_000,
    max_pending_jobs=100_000,
)
AppFactory = Callable[..., "AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]"]


def make_settings(data_dir: Path, **overrides: object) -> EngineSettings:
    """Engine settings for tests: no in-process workers, so tests drain jobs explicitly, and
    no voice preload (a test that gives in-process workers does not pay for the models)."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "jobs": JobSettings(in_process_workers=0, wait_timeout_seconds=30),
        # Abuse limits are tested on their own (tests/security/test_abuse.py); elsewhere
        # many calls from one test client are the point, not an attack.
        "limits": RELAXED_LIMITS,
        "voice": {"preload": False},
    }
    values.update(overrides)
    return EngineSettings.model_validate(values)


@asynccontextmanager
async def running_engine(
    settings: EngineSettings, handlers: Mapping[str, Handler] | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Start the app (lifespan included) and a client that talks to it in-process."""
    app = create_app(settings, handlers=handlers)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


def services_of(app: FastAPI) -> EngineServices:
    services: EngineServices = app.state.services
    return services


@pytest.fixture
def engine_settings(tmp_path: Path) -> EngineSettings:
    return make_settings(tmp_path / "engine")


@pytest.fixture
async def engine(
    engine_settings: EngineSettings,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running_engine(engine_settings) as pair:
        yield pair


@pytest.fixture
async def api(engine: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return engine[1]


async def register(api: httpx.AsyncClient, email: str = "alice@example.com") -> str:
    """Register ``email`` and return its API key."""
    resp = await api.post("/api/users/register", params={"email": email})
    assert resp.status_code == 200, resp.text
    key: str = resp.json()["api_key"]
    return key


@pytest.fixture
async def alice_key(api: httpx.AsyncClient) -> str:
    return await register(api, "alice@example.com")


@pytest.fixture
async def bob_key(api: httpx.AsyncClient) -> str:
    return await register(api, "bob@example.com")
