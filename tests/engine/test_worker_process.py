"""A separate ``tada-engine worker`` process over PostgreSQL and Redis runs the API's jobs.

The API runs in-process with no worker of its own (``in_process_workers = 0``) and nothing
in the test drains the queue: the only consumer is the worker subprocess, which shares the
database, the queue and the data directory with it (as on one machine with local storage).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.settings import EngineSettings, load_engine_settings
from tests.conftest import register, running_engine
from tests.engine.image.test_lora_api import IMAGE, h, upload_zip, wait_final
from tests.engine.image.zips import good_zip
from tests.waiting import CEILING_S

pytestmark = pytest.mark.slow(20)

REPO = Path(__file__).resolve().parents[2]
STOP_SECONDS = 60
METRICS_TOKEN = "w" * 32


def write_config(path: Path, data_dir: Path, database_url: str, redis_url: str) -> Path:
    """The one config both processes read (TOML's basic strings are JSON strings)."""
    training = ", ".join(f"{k} = {json.dumps(v)}" for k, v in IMAGE["training"].items())
    path.write_text(
        f"""
[engine]
data_dir = {json.dumps(str(data_dir))}
database_url = {json.dumps(database_url)}

[engine.jobs]
backend = "redis"
redis_url = {json.dumps(redis_url)}
in_process_workers = 0
wait_timeout_seconds = {CEILING_S}

[engine.limits]
storage_uri = {json.dumps(redis_url)}

[engine.voice]
preload = false

[engine.image]
training = {{ {training} }}
zip = {{ min_side = {IMAGE["zip"]["min_side"]} }}
generation = {{ steps = {IMAGE["generation"]["steps"]} }}
"""
    )
    return path


@pytest.fixture
def settings(tmp_path: Path, postgres_url: str, redis_url: str) -> EngineSettings:
    config = write_config(tmp_path / "config.toml", tmp_path / "engine", postgres_url, redis_url)
    return load_engine_settings(config, environ={})


@pytest.fixture
def metrics_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def worker(
    tmp_path: Path, settings: EngineSettings, metrics_port: int
) -> Iterator[subprocess.Popen[bytes]]:
    """``tada-engine worker`` on the same config, its output in ``worker.log``, its metrics
    on ``metrics_port`` (behind the token)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "TADA_ENGINE_METRICS_TOKEN": METRICS_TOKEN,
    }
    env.pop("TADA_CONFIG", None)
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine",
            "--config",
            str(tmp_path / "config.toml"),
            "worker",
            "--metrics-port",
            str(metrics_port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def worker_metrics(port: int) -> str:
    """The worker's own metrics endpoint: refused without the token, read with it."""
    url = f"http://127.0.0.1:{port}/metrics"
    assert httpx.get(url).status_code == 401
    resp = httpx.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert resp.status_code == 200
    return resp.text


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


async def test_a_worker_process_trains_and_draws_what_the_api_queued(
    tmp_path: Path, settings: EngineSettings, worker: subprocess.Popen[bytes], metrics_port: int
) -> None:
    assert settings.jobs.backend == "redis" and settings.jobs.in_process_workers == 0
    assert settings.resolved_database_url.startswith("postgresql+asyncpg://")
    async with running_engine(settings) as (_, api):
        key = await register(api, "wanda@example.com")
        upload_id = await upload_zip(api, key, good_zip(4))
        started = await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        assert started.status_code == 202, started.text
        trained = await wait_final(api, key, upload_id)
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert trained["status"] == "succeeded", (trained, log[-3000:])
        # The API waits for the image the worker draws (a job of its own).
        drawn = await api.post(
            f"/api/loras/{trained['id']}/generations", json={"prompt": "a cat"}, headers=h(key)
        )
        assert drawn.status_code == 200, drawn.text
        image = await api.get(httpx.URL(drawn.json()["url"]).raw_path.decode())
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    # The jobs ran in the worker process: its own endpoint counts them.
    metrics = worker_metrics(metrics_port)
    for kind in ("image.train_lora", "image.generate"):
        count = "tada_engine_job_duration_seconds_count"
        assert sample(metrics, count, kind=kind, outcome="succeeded") == 1, metrics
    assert sample(metrics, "tada_engine_model_loads_total", model="image") == 1
    assert sample(metrics, "tada_engine_model_load_seconds", model="image") > 0
    assert worker.poll() is None, "the worker stopped by itself"
    worker.send_signal(signal.SIGTERM)
    started_at = time.monotonic()
    assert worker.wait(timeout=STOP_SECONDS) == 0
    assert time.monotonic() - started_at < STOP_SECONDS
