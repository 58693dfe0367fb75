"""The engine database: the same Alembic migrations build it on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import sqlalchemy
from fastapi import FastAPI
from sqlalchemy import CursorResult

from engine.db import SQLITE_POOL_SIZE, Database, sync_url
from engine.models import Base
from tests.conftest import database_backend, database_dump, register, services_of
from tests.servers import PostgresServer
from tests.waiting import CEILING_S


def _heads() -> set[str]:
    """Every head of the engine's migration scripts, read from the scripts themselves."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from engine.db import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return set(ScriptDirectory.from_config(cfg).get_heads())


HEADS = _heads()


@pytest.fixture
async def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A database nothing was created in yet, on this run's back end."""
    if database_backend() == "postgres":
        server = request.getfixturevalue("postgres")
        name = f"empty_{uuid.uuid4().hex[:16]}"
        db = Database(server.create_database(name))
        try:
            yield db
        finally:
            await db.dispose()
            server.drop_database(name)
        return
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'fresh.sqlite3'}")
    try:
        yield db
    finally:
        await db.dispose()


def test_sync_url_maps_each_async_driver_to_its_blocking_twin() -> None:
    assert sync_url("sqlite+aiosqlite:////x/e.sqlite3") == "sqlite:////x/e.sqlite3"
    assert (
        sync_url("postgresql+asyncpg://u:p@h:5432/d?ssl=require")
        == "postgresql+psycopg://u:p@h:5432/d?ssl=require"
    )


def test_migrations_build_every_table_the_models_declare_and_rerun_as_a_no_op(
    empty_database: Database,
) -> None:
    empty_database.migrate()
    with empty_database.sync_engine.connect() as conn:
        tables = set(sqlalchemy.inspect(conn).get_table_names())
        versions = set(
            conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalars()
        )
    assert set(Base.metadata.tables) <= tables, set(Base.metadata.tables) - tables
    assert versions == HEADS
    empty_database.migrate()  # already at every head: nothing to do, nothing fails
    with empty_database.sync_engine.connect() as conn:
        again = set(
            conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalars()
        )
    assert again == HEADS


def test_the_migrated_columns_match_the_models(empty_database: Database) -> None:
    """What the migrations built is what the ORM writes: same columns, same nullability."""
    empty_database.migrate()
    with empty_database.sync_engine.connect() as conn:
        inspector = sqlalchemy.inspect(conn)
        for name, table in Base.metadata.tables.items():
            built = {c["name"]: c for c in inspector.get_columns(name)}
            assert set(built) == set(table.columns.keys()), name
            for column in table.columns:
                assert built[column.name]["nullable"] == column.nullable, (name, column.name)


async def test_the_engine_under_test_runs_on_this_runs_database(
    engine: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    """The PostgreSQL pass really runs on PostgreSQL (not silently on the SQLite default)."""
    app, api = engine
    url = services_of(app).db.url
    expected = "postgresql+asyncpg://" if database_backend() == "postgres" else "sqlite+aiosqlite:"
    assert url.startswith(expected), url
    await register(api, "dora@example.com")
    assert "dora@example.com" in database_dump(app)


def _count_hand_offs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every function aiosqlite runs on its connection thread, by name, from now on."""
    import aiosqlite

    calls: list[str] = []
    original = aiosqlite.Connection._execute

    async def counted(
        self: aiosqlite.Connection, fn: object, *args: object, **kw: object
    ) -> object:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kw)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return calls


async def test_a_sqlite_read_is_one_hand_off_to_the_driver_thread_and_no_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each hand-off to aiosqlite's thread wakes that thread and then the event loop; the
    stock adapter made four per statement plus one for the rollback that ends a read."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'e.sqlite3'}")
    try:
        async with db.session() as session:
            await session.execute(sqlalchemy.text("SELECT 1"))  # the connection is open
        calls = _count_hand_offs(monkeypatch)
        async with db.session() as session:
            rows = (
                await session.execute(sqlalchemy.text("SELECT 1, 'a' UNION SELECT 2, 'b'"))
            ).all()
        assert [tuple(r) for r in rows] == [(1, "a"), (2, "b")]
        assert calls == ["_run_statement"]
    finally:
        await db.dispose()


async def test_sqlite_writes_through_the_one_hop_adapter_keep_their_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row counts, last row ids, executemany, commits and constraint errors as before."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'e.sqlite3'}")
    text = sqlalchemy.text
    try:
        async with db.async_engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, n TEXT UNIQUE)"))
        calls = _count_hand_offs(monkeypatch)
        async with db.session() as session:
            one = cast(
                CursorResult[Any], await session.execute(text("INSERT INTO t (n) VALUES ('a')"))
            )
            assert one.lastrowid == 1
            rows = [{"n": "b"}, {"n": "c"}]
            many = cast(
                CursorResult[Any],
                await session.execute(text("INSERT INTO t (n) VALUES (:n)"), rows),
            )
            assert many.rowcount == 2
            await session.commit()
        assert "commit" in calls  # a transaction was open: the commit really ran
        async with db.session() as session:
            update = text("UPDATE t SET n = n || '!' WHERE id > 1")
            changed = cast(CursorResult[Any], await session.execute(update))
            assert changed.rowcount == 2
            await session.rollback()
            with pytest.raises(sqlalchemy.exc.IntegrityError):
                await session.execute(text("INSERT INTO t (n) VALUES ('a')"))
        async with db.session() as session:
            names = (await session.execute(text("SELECT n FROM t ORDER BY id"))).scalars().all()
        assert names == ["a", "b", "c"]
    finally:
        await db.dispose()


async def test_pool_connections_go_to_waiters_first_come_first_served(tmp_path: Path) -> None:
    """A connection given back goes to the oldest waiter, never to a request that arrived
    later (SQLAlchemy's asyncio queue let newcomers barge in: p99 of seconds under load)."""
    import asyncio

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'e.sqlite3'}")
    order: list[str] = []
    size = SQLITE_POOL_SIZE
    try:
        held = [await db.async_engine.connect() for _ in range(size)]

        async def use(name: str) -> None:
            async with db.async_engine.connect() as conn:
                order.append(name)
                await conn.execute(sqlalchemy.text("SELECT 1"))

        first = asyncio.create_task(use("first"))
        second = asyncio.create_task(use("second"))
        await asyncio.sleep(0.05)  # both wait now
        late = asyncio.create_task(use("late"))  # runs as the first connection comes back
        await held[0].close()
        await asyncio.sleep(0.05)
        for conn in held[1:]:
            await conn.close()
        await asyncio.gather(first, second, late)
        assert order == ["first", "second", "late"]
    finally:
        await db.dispose()


async def test_a_cancelled_waiter_does_not_lose_the_pools_connection(tmp_path: Path) -> None:
    import asyncio

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'e.sqlite3'}")
    size = SQLITE_POOL_SIZE
    try:
        held = [await db.async_engine.connect() for _ in range(size)]

        async def connect() -> object:
            return await db.async_engine.connect()

        waiter = asyncio.create_task(connect())
        await asyncio.sleep(0.05)
        await held[0].close()  # handed to the waiter...
        waiter.cancel()  # ...which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await waiter
        for conn in held[1:]:
            await conn.close()
        again = [await asyncio.wait_for(db.async_engine.connect(), 5) for _ in range(size)]
        for conn in again:
            await conn.close()
    finally:
        await db.dispose()


def test_processes_migrating_one_empty_postgres_database_at_once_all_succeed(
    postgres: PostgresServer,
) -> None:
    """Every API and worker process of a deployment may run the migrations as it starts: on
    an empty PostgreSQL database they raced (``DuplicateTable alembic_version``) unless one
    waits for the other. Real processes (Alembic's context is one per process)."""
    url = postgres.create_database(f"race_{uuid.uuid4().hex[:12]}")
    start_at = time.time() + 3.0  # all of them past their imports, then at once
    code = (
        "import sys, time; from engine.db import Database; db = Database(sys.argv[1]); "
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); db.migrate()"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, str(start_at)],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        for _ in range(4)
    ]
    failures = []
    for proc in procs:
        _, err = proc.communicate(timeout=CEILING_S)
        if proc.returncode != 0:
            failures.append(err[-2000:])
    assert failures == []
    with sqlalchemy.create_engine(sync_url(url)).connect() as conn:
        versions = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version"))
        assert {row[0] for row in versions} == HEADS
