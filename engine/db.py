"""Database access: an async engine for the API, a sync engine for workers, Alembic at start-up."""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, pool, text
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_
from sqlalchemy.util.queue import Empty, Full, QueueCommon

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Connections of the API's SQLite pool. SQLite runs one writer at a time, and a read of a
# few rows takes tens of microseconds: more connections only add threads contending for
# the GIL (measured: 5 beat 2, 12 and 50 on CPU per request).
SQLITE_POOL_SIZE = 5


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


_Description = tuple[tuple[Any, ...], ...] | None


def _run_statement(
    conn: sqlite3.Connection, operation: str, parameters: Any, many: bool
) -> tuple[_Description, list[Any], int, int | None]:
    """Execute, fetch and close on aiosqlite's thread: the whole statement in one hop."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, () if parameters is None else parameters)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class _OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """SQLAlchemy's aiosqlite cursor makes four thread hand-offs per statement (open the
    cursor, execute, fetch, close), each a queue put, a thread wake-up and a loop wake-up;
    this one makes one. Rows are fetched whole, as the stock (non server-side) cursor does.
    """

    __slots__ = ("_description", "_lastrowid", "_rowcount")
    # Nothing to close on the loop: the sqlite3 cursor is closed on the thread.
    _awaitable_cursor_close = False

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: _Description = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> _Description:  # type: ignore[override]
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    def _run(self, operation: Any, parameters: Any, many: bool) -> None:
        conn: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        try:
            result = await_(conn._execute(_run_statement, conn._conn, operation, parameters, many))
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        self._description, rows, self._rowcount, self._lastrowid = result
        self._rows = collections.deque(rows)

    def execute(self, operation: Any, parameters: Any = None) -> None:
        self._run(operation, parameters, False)

    def executemany(self, operation: Any, seq_of_parameters: Sequence[Any]) -> None:
        self._run(operation, seq_of_parameters, True)

    def close(self) -> None:
        self._rows.clear()


class _OneHopConnection(AsyncAdapt_aiosqlite_connection):
    """Also skips the hand-off for a commit or rollback with no transaction open (every
    read-only session ends with one; sqlite3 would do nothing with it anyway)."""

    __slots__ = ()
    _cursor_cls = _OneHopCursor  # type: ignore[assignment]

    def rollback(self) -> None:
        conn = self._connection
        if conn._connection is not None and conn.in_transaction:  # type: ignore[attr-defined]
            super().rollback()

    def commit(self) -> None:
        conn = self._connection
        if conn._connection is not None and conn.in_transaction:  # type: ignore[attr-defined]
            super().commit()


class _OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite DBAPI shim, with :class:`_OneHopConnection` connections."""

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        plain = super().connect(*arg, **kw)
        return _OneHopConnection(self, plain._connection)


class _FairQueue(QueueCommon[Any]):
    """The pool's idle connections, handed to waiters strictly first come, first served.

    SQLAlchemy's asyncio queue lets a newcomer take a connection that was just returned
    ahead of the requests already waiting for one, so under load a few requests wait for
    seconds while the rest go straight through (p50 11 ms, p99 3 s at 100 connections).
    Here a returned connection goes to the oldest waiter.
    """

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        self.maxsize = maxsize
        self.use_lifo = False  # FIFO always (read by the pool when it is recreated)
        self._items: collections.deque[Any] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._items)

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return
        if self.full():
            raise Full()
        self._items.append(item)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        # Items wait here only while nobody waits for one (put_nowait hands them over).
        if not self._items:
            raise Empty()
        return self._items.popleft()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if self._items or not block:
            return self.get_nowait()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await_(self._wait(waiter, timeout))

    async def _wait(self, waiter: asyncio.Future[Any], seconds: float | None) -> Any:
        try:
            async with asyncio.timeout(seconds):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Handed a connection just as this request was cancelled or timed out:
                # pass it on rather than lose it from the pool.
                self.put_nowait(waiter.result())
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise Empty() from exc
            raise


class _FairPool(pool.AsyncAdaptedQueuePool):
    """:class:`~sqlalchemy.pool.AsyncAdaptedQueuePool` with a :class:`_FairQueue`."""

    _queue_class = _FairQueue
    # SQLAlchemy names a pool's logger after its class's module: without this, its INFO
    # lines ("Pool disposed", invalidations) would log under engine.* at the engine's level.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"


# Statements that lock one member's row until the transaction ends (see lock_member).
_LOCK_MEMBER_POSTGRES = text("SELECT id FROM users WHERE id = :user_id FOR NO KEY UPDATE")
# SQLite has no row locks: a write takes the database's one write lock (WAL: readers go on).
# A column no key or index holds: writing the id would make SQLite check every child row.
_LOCK_MEMBER_SQLITE = text("UPDATE users SET key_prefix = key_prefix WHERE id = :user_id")


async def lock_member(session: AsyncSession, user_id: str) -> None:
    """Serialise a member's counted writes: from here until ``session``'s transaction ends,
    another transaction that locks the same member waits.

    A counted limit (count the member's rows, then insert one when under the cap) is one
    unit with this taken first, on both databases: PostgreSQL locks the member's row
    (``SELECT ... FOR NO KEY UPDATE``: lockers wait for each other, while an insert that
    references the member, which takes only a key-share lock, never waits for it; under
    READ COMMITTED the count that follows sees every insert committed before the lock was
    granted); SQLite takes its single write lock (a
    write as the transaction's first statement, which waits out other writers within the
    busy timeout, and then reads the latest data). Roll back or commit soon after.
    """
    name = session.get_bind().dialect.name
    statement = _LOCK_MEMBER_SQLITE if name == "sqlite" else _LOCK_MEMBER_POSTGRES
    await session.execute(statement, {"user_id": user_id})


# The PostgreSQL advisory lock key the engine's migrations run under.
MIGRATION_LOCK = 0x7ADA_0001


class Database:
    """Owns both engines and their session factories; close it with :meth:`dispose`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        in_memory = False
        if self.is_sqlite:
            path = url.split("///", 1)[-1]
            in_memory = not path or path == ":memory:"
            if not in_memory:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        # One in-memory database lives in one connection (SQLAlchemy's StaticPool).
        options: dict[str, Any] = {} if in_memory else {"poolclass": _FairPool}
        if url.startswith("sqlite+aiosqlite"):
            options["module"] = _OneHopDBAPI(aiosqlite, sqlite3)
            if not in_memory:
                # A fixed set of connections (each is a thread of aiosqlite's): past it a
                # request waits its turn; an overflow connection would be opened (a thread,
                # the file, the pragmas) and closed again for every request under load.
                options.update(pool_size=SQLITE_POOL_SIZE, max_overflow=0)
        self.async_engine: AsyncEngine = create_async_engine(url, **options)
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
            if not self.is_sqlite:
                # Every process of a deployment may migrate as it starts: one at a time (the
                # lock ends with this transaction), so the others find the work done instead
                # of racing to create the same tables.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")

    async def dispose(self) -> None:
        await self.async_engine.dispose()
        self.sync_engine.dispose()
