"""The production roles of ``tada-engine``: an API process without job consumers
(``serve --no-consumers``) and workers that take only some queues (``worker --queues``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select

from engine.cli import main
from engine.jobs import JobContext, UnknownQueue
from engine.models import Job, JobStatus
from engine.settings import EngineSettings, JobSettings
from tests.conftest import make_settings, running_engine, services_of
from tests.engine.image.zips import good_zip
from tests.servers import free_port
from tests.waiting import CEILING_S

REPO = Path(__file__).resolve().parents[2]
ENGINE = [sys.executable, "-m", "engine"]


def split_settings(tmp_path: Path) -> EngineSettings:
    return make_settings(
        tmp_path / "engine", jobs=JobSettings(in_process_workers=0, split_queues=True)
    )


def write_config(path: Path, data_dir: Path, *, split: bool, database_url: str | None) -> Path:
    database = f"database_url = {json.dumps(database_url)}" if database_url else ""
    path.write_text(
        f"""
[engine]
data_dir = {json.dumps(str(data_dir))}
{database}
[engine.jobs]
split_queues = {"true" if split else "false"}
max_attempts = 1
[engine.voice]
preload = false
[engine.limits]
exempt_clients = ["127.0.0.1"]
[engine.image.zip]
min_side = 32
[engine.image.training]
steps = 2
rank = 4
[engine.image.generation]
steps = 1
"""
    )
    return path


async def test_split_queues_carry_each_family_to_its_own_workers(tmp_path: Path) -> None:
    ran: list[str] = []

    def handler(ctx: JobContext) -> dict:
        ran.append(ctx.kind)
        return {}

    handlers = {"voice.generate": handler, "image.generate": handler}
    async with running_engine(split_settings(tmp_path), handlers=handlers) as (app, _):
        services = services_of(app)
        assert services.queue.names == ["voice", "image"]
        voice = await services.jobs.submit("voice.generate", {})
        image = await services.jobs.submit("image.generate", {})
        assert services.queue.pending(["image"]) == 1 == services.queue.pending(["voice"])
        # A GPU machine's worker: the image job only; the voice job waits for its worker.
        assert services.worker.drain(["image"]) == 1
        assert ran == ["image.generate"]
        assert (await services.jobs.get(voice.id)).status == JobStatus.QUEUED.value  # type: ignore[union-attr]
        assert services.worker.drain(["voice"]) == 1
        assert ran == ["image.generate", "voice.generate"]
        for job in (voice, image):
            assert (await services.jobs.get(job.id)).status == JobStatus.SUCCEEDED.value  # type: ignore[union-attr]


async def test_one_queue_by_default_and_a_named_queue_is_refused_there(tmp_path: Path) -> None:
    async with running_engine(make_settings(tmp_path / "engine")) as (app, _):
        queue = services_of(app).queue
        assert queue.names == ["all"]
        with pytest.raises(UnknownQueue, match="split_queues = true"):
            queue.select(["image"])


def test_worker_refuses_a_queue_the_layout_does_not_have(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = write_config(tmp_path / "one.toml", tmp_path / "one", split=False, database_url=None)
    assert main(["--config", str(one), "worker", "--queues", "image", "--drain"]) == 2
    assert "split_queues = true" in capsys.readouterr().err
    split = write_config(tmp_path / "split.toml", tmp_path / "split", split=True, database_url=None)
    assert main(["--config", str(split), "worker", "--queues", "gpu", "--drain"]) == 2
    err = capsys.readouterr().err
    assert "no queue gpu" in err and "voice, image" in err
    with pytest.raises(SystemExit):  # argparse: an empty list is not a choice
        main(["--config", str(split), "worker", "--queues", " , "])


def _wait_healthy(base: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + CEILING_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, "serve exited"
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("serve --no-consumers did not come up")


def test_an_api_process_without_consumers_leaves_jobs_to_the_image_worker(
    tmp_path: Path,
) -> None:
    """``serve --no-consumers`` queues the training and runs nothing; ``worker --queues image
    --drain`` (in this process) trains it, on the same database and queue."""
    database_url = os.environ.get("TADA_TEST_DATABASE_URL")
    config = write_config(
        tmp_path / "config.toml", tmp_path / "data", split=True, database_url=database_url
    )
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TADA_CONFIG", None)
    proc = subprocess.Popen(
        [*ENGINE, "--config", str(config), "serve", "--port", str(port), "--no-consumers"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc)
        with httpx.Client(base_url=base, timeout=60) as c:
            key = c.post("/api/users/register", params={"email": "r@example.com"}).json()
            h = {"X-API-Key": key["api_key"]}
            target = c.post(
                "/api/loras/uploads/url",
                params={"name": "set", "trigger_word": "tadz", "file_name": "s.zip"},
                headers=h,
            ).json()
            parts = urlsplit(target["upload_url"])
            put = c.put(
                f"{parts.path}?{parts.query}", content=good_zip(4), headers=target["headers"]
            )
            assert put.status_code == 200, put.text
            started = c.post(f"/api/loras/trainings/{target['id']}", headers=h)
            assert started.status_code == 202, started.text
            time.sleep(2.0)  # a consumer in the API process would have claimed it by now
            training = f"/api/loras/trainings/{target['id']}"
            assert c.get(training, headers=h).json()["status"] == "starting"
            # The voice worker has nothing to do with it.
            assert main(["--config", str(config), "worker", "--queues", "voice", "--drain"]) == 0
            assert c.get(training, headers=h).json()["status"] == "starting"
            assert main(["--config", str(config), "worker", "--queues", "image", "--drain"]) == 0
            assert c.get(training, headers=h).json()["status"] == "succeeded"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=CEILING_S)
    assert "job consumer started" not in out, out[-2000:]


async def test_jobs_claimed_are_recorded_once(tmp_path: Path) -> None:
    """A duplicate message on the split queues is harmless: the claim is atomic."""
    ran: list[str] = []
    handlers = {"image.generate": lambda ctx: ran.append(ctx.job_id) or {}}
    async with running_engine(split_settings(tmp_path), handlers=handlers) as (app, _):
        services = services_of(app)
        job = await services.jobs.submit("image.generate", {})
        services.queue.enqueue(job.id, "image.generate")
        assert services.worker.drain() == 2
        assert ran == [job.id]
        with services.db.sync_session() as s:
            assert s.scalar(select(Job.attempts).where(Job.id == job.id)) == 1
