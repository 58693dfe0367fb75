"""The bot's database: an async SQLAlchemy engine, Alembic migrations at start-up."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def sync_url(url: str) -> str:
    """The blocking-driver twin of an async URL (Alembic uses it)."""
    return url.replace("sqlite+aiosqlite", "sqlite").replace(
        "postgresql+asyncpg", "postgresql+psycopg"
    )


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        # Deleted rows (a forgotten member's key) are overwritten, not left in free pages.
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()


class Store:
    """Owns the async engine and its session factory; close it with :meth:`close`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(url)
        if self.is_sqlite:
            _sqlite_pragmas(self.engine.sync_engine)
        self.session: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )

    def __repr__(self) -> str:
        return f"<Store {self.engine.url!r}>"

    def _migrate_blocking(self) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        engine = create_engine(sync_url(self.url))
        if self.is_sqlite:
            _sqlite_pragmas(engine)
        try:
            with engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "heads")
        finally:
            engine.dispose()

    async def migrate(self) -> None:
        """Apply every Alembic migration (all heads), in a thread."""
        await asyncio.to_thread(self._migrate_blocking)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
