"""A production layout on one machine, for the scale test and ``bench/scale.py``.

Real processes over real servers: ``tada-engine serve --no-consumers`` API processes on
their own ports and ``tada-engine worker`` processes, all reading one config file that
names a PostgreSQL database, a Redis queue (split per job family) and one storage. Storage
is the local disk in one shared directory by default; ``storage`` takes the
``[engine.storage]`` table of another back end (S3) once the engine has one.

Members are driven through the HTTP API only, as a bot or any client would: register,
upload a voice sample, clone, speak, draw a demo image.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg

from tests.servers import free_port
from tests.waiting import CEILING_S

REPO = Path(__file__).resolve().parents[2]
ENGINE = [sys.executable, "-m", "engine"]
# Until every process answers: their readiness, not a time (CEILING_S only ends a hang).
START_SECONDS = CEILING_S
# A killed worker's jobs are taken back by another once its heartbeat is this old.
HEARTBEAT_SECONDS = 0.5
STALE_AFTER_SECONDS = 3.0


def _toml(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # TOML basic strings are JSON strings


def write_config(
    path: Path,
    *,
    data_dir: Path,
    database_url: str,
    redis_url: str,
    demo_lora: Path,
    storage: Mapping[str, Any] | None = None,
) -> Path:
    """The one config every API and worker process reads (``storage``: ``[engine.storage]``)."""
    storage_table = (
        ""
        if not storage
        else "[engine.storage]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in storage.items())
    )
    path.write_text(
        f"""
[engine]
data_dir = {_toml(str(data_dir))}
database_url = {_toml(database_url)}

[engine.jobs]
backend = "redis"
redis_url = {_toml(redis_url)}
split_queues = true
in_process_workers = 0
wait_timeout_seconds = {CEILING_S}
heartbeat_seconds = {HEARTBEAT_SECONDS}
stale_after_seconds = {STALE_AFTER_SECONDS}
max_attempts = 5

[engine.limits]
storage_uri = {_toml(redis_url)}
exempt_clients = ["127.0.0.1"]
max_pending_jobs = 100000
max_pending_uploads = 100000

[engine.voice]
backend = "cpu-reference"  # the measured back end, whatever a host has pulled
# Loaded as each worker starts, beside the first jobs, not by the first job of each kind.
preload = true
spectral_mapping = false

[engine.image]
zip = {{ min_side = 32 }}
generation = {{ steps = 1 }}
demos = {{ tadz = {{ lora_path = {_toml(str(demo_lora))}, trigger_word = "tadz" }} }}

{storage_table}"""
    )
    return path


def train_demo_lora(path: Path) -> Path:
    """A demo LoRA on the tiny base model, as an operator trains one (a few seconds)."""
    from PIL import Image

    from engine.image.pipeline import ImageModel
    from engine.image.settings import ImageSettings
    from engine.image.types import TrainImage
    from tests.engine.image.zips import image_bytes

    examples = [
        TrainImage(Image.open(io.BytesIO(image_bytes(i))).convert("RGB"), "tadz") for i in range(2)
    ]
    ImageModel.from_settings(ImageSettings()).train_lora(
        examples, path, rank=4, steps=2, learning_rate=1e-2, seed=0
    )
    return path


def short_sample(wav: bytes, seconds: float = 4.5) -> bytes:
    """The first ``seconds`` of a WAV recording (a short sample is a quick clone)."""
    import wave

    with wave.open(io.BytesIO(wav)) as src:
        params = src.getparams()
        frames = src.readframes(int(params.framerate * seconds))
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames)
    return out.getvalue()


@dataclass
class Process:
    """One engine process: its role's arguments, its log, and the running ``Popen``."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.log.parent,
                start_new_session=True,
            )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no clean-up, as a machine lost or the OOM killer would do it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class Cluster:
    """API and worker processes on one config; :func:`cluster` builds and stops it."""

    root: Path
    config: Path
    database_url: str
    env: dict[str, str]
    apis: list[Process] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    @property
    def bases(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def add_api(self) -> Process:
        port = free_port()
        name = f"api{len(self.apis) + 1}"
        process = Process(
            name,
            [*ENGINE, "--config", str(self.config), "serve", "--no-consumers", f"--port={port}"],
            self.root / f"{name}.log",
            self.env,
        )
        process.start()
        self.apis.append(process)
        self.ports.append(port)
        return process

    def add_worker(self, queues: str = "voice,image", threads: int = 1) -> Process:
        name = f"worker{len(self.workers) + 1}"
        process = Process(
            name,
            [
                *ENGINE,
                "--config",
                str(self.config),
                "worker",
                f"--queues={queues}",
                f"--workers={threads}",
            ],
            self.root / f"{name}.log",
            self.env,
        )
        process.start()
        self.workers.append(process)
        return process

    def wait_ready(self) -> None:
        """Every API answers /healthz and every worker logged that it runs."""
        deadline = time.monotonic() + START_SECONDS
        for process, base in zip(self.apis, self.bases, strict=True):
            while True:
                assert process.alive, f"{process.name} exited:\n{process.tail()}"
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"{process.name} did not start"
                time.sleep(0.2)
        for process in self.workers:
            self.wait_worker(process, deadline)

    def wait_worker(self, process: Process, deadline: float | None = None) -> None:
        deadline = deadline or time.monotonic() + START_SECONDS
        while process.tail(100_000).count("worker running") < process.starts:
            assert process.alive, f"{process.name} exited:\n{process.tail()}"
            assert time.monotonic() < deadline, f"{process.name} did not start"
            time.sleep(0.2)

    def stop(self) -> None:
        for process in [*self.workers, *self.apis]:
            process.stop()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of one read on the engine database (the truth about every job)."""
        return query(self.database_url, sql)


def query(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one read on a PostgreSQL database given by its SQLAlchemy URL."""
    parts = urlsplit(database_url)
    conninfo = (
        f"host={parts.hostname} port={parts.port} user={parts.username} "
        f"dbname={parts.path.lstrip('/')}"
    )
    with psycopg.connect(conninfo) as conn:
        return list(conn.execute(sql.encode()).fetchall())


@contextmanager
def cluster(
    root: Path,
    *,
    database_url: str,
    redis_url: str,
    apis: int = 2,
    workers: int = 2,
    worker_threads: int = 1,
    storage: Mapping[str, Any] | None = None,
) -> Iterator[Cluster]:
    """Start ``apis`` API processes and ``workers`` workers; stop them all at the end."""
    root.mkdir(parents=True, exist_ok=True)
    demo = train_demo_lora(root / "tadz.safetensors")
    config = write_config(
        root / "config.toml",
        data_dir=root / "shared",
        database_url=database_url,
        redis_url=redis_url,
        demo_lora=demo,
        storage=storage,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO)]))}
    for name in ("TADA_CONFIG", "TADA_TEST_DATABASE_URL", "TADA_ENGINE_SETTINGS_JSON"):
        env.pop(name, None)
    # Once, before any role starts: processes that migrate an empty database at the same
    # moment race to create Alembic's own table (DuplicateTable).
    subprocess.run(
        [*ENGINE, "--config", str(config), "migrate"],
        env=env,
        cwd=root,
        check=True,
        capture_output=True,
    )
    built = Cluster(root=root, config=config, database_url=database_url, env=env)
    try:
        for _ in range(apis):
            built.add_api()
        for _ in range(workers):
            built.add_worker(threads=worker_threads)
        built.wait_ready()
        yield built
    finally:
        built.stop()


@dataclass
class MemberRun:
    """What one member got back: the ids the API answered with, and any failure."""

    email: str
    key: str = ""
    voice_id: str = ""
    speech_id: str = ""
    image_id: str = ""
    errors: list[str] = field(default_factory=list)


async def _ok(resp: httpx.Response, what: str) -> dict[str, Any]:
    if resp.status_code != 200:
        raise AssertionError(f"{what}: {resp.status_code} {resp.text[:300]}")
    body: dict[str, Any] = resp.json()
    return body


async def register_and_clone(
    client: httpx.AsyncClient, email: str, sample: bytes
) -> tuple[str, str]:
    """A member registered, their sample PUT to its upload URL and cloned: (key, voice id)."""
    key = (
        await _ok(await client.post("/api/users/register", params={"email": email}), "register")
    )["api_key"]
    h = {"X-API-Key": key}
    target = await _ok(
        await client.post(
            "/api/voices/uploads/url",
            params={"name": email.split("@")[0], "file_name": "sample.wav"},
            headers=h,
        ),
        "voice upload url",
    )
    parts = urlsplit(target["upload_url"])
    await _ok(
        await client.put(f"{parts.path}?{parts.query}", content=sample, headers=target["headers"]),
        "voice upload",
    )
    cloned = await _ok(
        await client.post("/api/voices/uploads", params={"upload_id": target["id"]}, headers=h),
        "clone",
    )
    return key, str(cloned["id"])


async def run_member(client: httpx.AsyncClient, email: str, sample: bytes) -> MemberRun:
    """One member: register, clone a voice, speak a line, draw a demo image (in that order
    of requests; the speech and the image go to the queue at the same time)."""
    run = MemberRun(email)
    try:
        run.key, run.voice_id = await register_and_clone(client, email, sample)
        h = {"X-API-Key": run.key}
        speech, image = await asyncio.gather(
            client.post(
                f"/api/voices/{run.voice_id}/generations",
                json={"text": f"Hello from {email}."},
                headers=h,
            ),
            client.post("/api/demo/tadz", json={"prompt": f"{email} on a beach"}, headers=h),
        )
        run.speech_id = str((await _ok(speech, "speech"))["id"])
        run.image_id = str((await _ok(image, "image"))["id"])
    except (AssertionError, httpx.HTTPError) as exc:
        run.errors.append(f"{type(exc).__name__}: {exc}")
    return run


async def run_members(
    bases: list[str], count: int, sample: bytes, *, prefix: str = "m", concurrency: int = 64
) -> list[MemberRun]:
    """``count`` members at once, spread over the API processes round-robin."""
    gate = asyncio.Semaphore(concurrency)
    timeout = httpx.Timeout(300.0, connect=10.0)
    clients = [httpx.AsyncClient(base_url=base, timeout=timeout) for base in bases]

    async def one(i: int) -> MemberRun:
        async with gate:
            return await run_member(clients[i % len(clients)], f"{prefix}{i}@example.com", sample)

    try:
        return list(await asyncio.gather(*(one(i) for i in range(count))))
    finally:
        for client in clients:
            await client.aclose()
