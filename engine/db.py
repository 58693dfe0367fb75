"""Database access: an async engine for the API, a sync engine for workers, Alembic at start-up."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def sync_url(url: str) -> str:
    """The blocking-driver twin of an async URL (workers and Alembic use it)."""
    return url.replace("sqlite+aiosqlite", "sqlite").replace(
        "postgresql+asyncpg", "postgresql+psycopg"
    )


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        # WAL lets the API read while a worker writes; busy_timeout waits out writers.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()


class Database:
    """Owns both engines and their session factories; close it with :meth:`dispose`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.async_engine: AsyncEngine = create_async_engine(url)
        self.sync_engine: Engine = create_engine(sync_url(url))
        if self.is_sqlite:
            _sqlite_pragmas(self.async_engine.sync_engine)
            _sqlite_pragmas(self.sync_engine)
        self.session: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.async_engine, expire_on_commit=False
        )
        self.sync_session: sessionmaker[Session] = sessionmaker(
            self.sync_engine, expire_on_commit=False
        )

    def migrate(self) -> None:
        """Apply every Alembic migration (all heads). Blocking: call it in a thread."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection_url"] = sync_url(self.url)
        with self.sync_engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")

    async def dispose(self) -> None:
        await self.async_engine.dispose()
        self.sync_engine.dispose()
