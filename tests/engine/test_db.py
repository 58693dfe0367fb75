"""The engine database: the same Alembic migrations build it on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy
from fastapi import FastAPI

from engine.db import Database, sync_url
from engine.models import Base
from tests.conftest import database_backend, database_dump, register, services_of


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
