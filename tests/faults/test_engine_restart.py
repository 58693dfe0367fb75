"""The engine process killed (SIGKILL) in the middle of a LoRA training, then started again.

With attempts left, the restart re-queues the training and it ends ``succeeded``, its LoRA
usable. With none left it ends ``failed`` with a reason a member can read, and starting
it again works. Nothing stays ``processing`` forever.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.engine.image.zips import good_zip
from tests.faults.engine_process import EngineProcess
from tests.waiting import CEILING_S

pytestmark = pytest.mark.slow(75)

FINAL = ("succeeded", "failed", "canceled")


def write_config(tmp: Path, *, max_attempts: int, steps: int, training: str = "") -> Path:
    config = tmp / "config.toml"
    config.write_text(
        f"""
[engine]
data_dir = "{tmp / "data"}"

[engine.jobs]
in_process_workers = 1
max_attempts = {max_attempts}
wait_timeout_seconds = {CEILING_S}

[engine.image.training]
steps = {steps}
rank = 4
batch_size = 2
learning_rate = 0.01
{training}

[engine.image.zip]
min_side = 32

[engine.image.generation]
steps = 2

[engine.voice]
preload = false  # these tests train LoRAs; loading the voice models would only cost CPU
"""
    )
    return config


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def start_training(api: httpx.Client) -> tuple[str, str]:
    key = api.post("/api/users/register", params={"email": "alice@example.com"}).json()["api_key"]
    target = api.post(
        "/api/loras/uploads/url",
        params={"name": "set", "trigger_word": "tadz", "file_name": "set.zip"},
        headers=h(key),
    ).json()
    parts = urlsplit(target["upload_url"])
    put = api.put(f"{parts.path}?{parts.query}", content=good_zip(4), headers=target["headers"])
    assert put.status_code == 200, put.text
    started = api.post(f"/api/loras/trainings/{target['id']}", headers=h(key))
    assert started.status_code == 202, started.text
    return key, str(target["id"])


def training(api: httpx.Client, key: str, upload_id: str) -> dict[str, object]:
    resp = api.get(f"/api/loras/trainings/{upload_id}", headers=h(key))
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body


def wait_for(api: httpx.Client, key: str, upload_id: str, done: object) -> dict:
    """Poll the training until ``done(body)``: its state, whatever the machine's load
    (:data:`CEILING_S` only ends a hang)."""
    deadline = time.monotonic() + CEILING_S
    body = training(api, key, upload_id)
    while time.monotonic() < deadline:
        body = training(api, key, upload_id)
        if done(body):  # type: ignore[operator]
            return body
        time.sleep(0.05)
    raise AssertionError(f"training never reached the expected state; last: {body}")


def mid_training(body: dict) -> bool:
    return body["status"] == "processing" and 5 <= int(body["progress"]) < 90


def test_killed_mid_training_it_reruns_after_restart_and_succeeds(tmp_path: Path) -> None:
    engine = EngineProcess(write_config(tmp_path, max_attempts=3, steps=60), tmp_path / "log")
    with engine:
        with httpx.Client(base_url=engine.url, timeout=30) as api:
            key, upload_id = start_training(api)
            cut = wait_for(api, key, upload_id, mid_training)
        engine.kill()
    assert cut["status"] == "processing"

    with engine, httpx.Client(base_url=engine.url, timeout=30) as api:
        final = wait_for(api, key, upload_id, lambda b: b["status"] in FINAL)
        assert final["status"] == "succeeded", final
        assert final["progress"] == 100 and final["error"] is None
        drawn = api.post(
            f"/api/loras/{final['id']}/generations", json={"prompt": "a cat"}, headers=h(key)
        )
        assert drawn.status_code == 200, drawn.text
        listed = api.get("/api/loras/trainings", headers=h(key)).json()
        assert listed["total"] == 1  # re-run, not duplicated
    assert "recovered jobs: 1 re-queued" in engine.output(tail=0)


def test_killed_after_a_checkpoint_it_resumes_from_the_saved_step(tmp_path: Path) -> None:
    """The worker's restart takes the training back where its last checkpoint left it."""
    every = "checkpoint_every = 10\nvalidation_steps = 1"
    config = write_config(tmp_path, max_attempts=3, steps=60, training=every)
    engine = EngineProcess(config, tmp_path / "log")
    with engine:
        with httpx.Client(base_url=engine.url, timeout=30) as api:
            key, upload_id = start_training(api)
            cut = wait_for(api, key, upload_id, lambda b: b["validation_step"] is not None)
        engine.kill()
    saved = int(cut["validation_step"])  # a checkpoint at least this late is on disk
    with engine, httpx.Client(base_url=engine.url, timeout=30) as api:
        final = wait_for(api, key, upload_id, lambda b: b["status"] in FINAL)
        assert final["status"] == "succeeded", final
    found = re.search(r"training resumes from \S+ at step (\d+)", engine.output(tail=0))
    assert found, engine.output(tail=40)
    assert int(found.group(1)) > saved  # not from step 1


def test_killed_with_no_attempt_left_it_fails_with_a_reason_then_can_start_again(
    tmp_path: Path,
) -> None:
    engine = EngineProcess(write_config(tmp_path, max_attempts=1, steps=400), tmp_path / "log")
    with engine:
        with httpx.Client(base_url=engine.url, timeout=30) as api:
            key, upload_id = start_training(api)
            wait_for(api, key, upload_id, mid_training)
        engine.kill()

    with engine, httpx.Client(base_url=engine.url, timeout=30) as api:
        failed = training(api, key, upload_id)
        assert failed["status"] == "failed", failed
        assert "interrupted by a restart" in str(failed["error"])
        again = api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        assert again.status_code == 202, again.text
        assert again.json()["status"] in ("starting", "processing")
        engine.kill()  # no need to wait for this second run
