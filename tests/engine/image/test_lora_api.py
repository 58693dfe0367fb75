"""The LoRA endpoints end to end: real zips, real training on the tiny model, real images."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from urllib.parse import urlsplit

import anyio.to_thread
import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from sqlalchemy import func, select

from engine.image.handlers import TRAIN_KIND
from engine.models import Job
from engine.settings import EngineSettings, JobSettings
from tests.conftest import (
    get_from,
    local_storage_only,
    make_settings,
    put_to,
    register,
    running_engine,
    services_of,
)
from tests.engine.image.zips import build_zip, good_zip, image_bytes
from tests.waiting import CEILING_S, polls

pytestmark = pytest.mark.slow(20)

IMAGE = {
    "training": {"steps": 6, "rank": 4, "learning_rate": 1e-2, "batch_size": 2},
    "zip": {"min_side": 32},
    "generation": {"steps": 3},
}


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def settings_for(tmp_path: Path, workers: int = 1, **image: object) -> EngineSettings:
    return make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=workers, wait_timeout_seconds=CEILING_S),
        image={**IMAGE, **image},
    )


async def lora_upload_url(api: httpx.AsyncClient, key: str, trigger: str = "tadz") -> dict:
    """A new LoRA upload: its id, pre-signed ``upload_url`` and the ``headers`` to send."""
    resp = await api.post(
        "/api/loras/uploads/url",
        params={"name": "My set", "trigger_word": trigger, "file_name": "set.zip"},
        headers=h(key),
    )
    assert resp.status_code == 200, resp.text
    body: dict = resp.json()
    return body


async def put_zip(api: httpx.AsyncClient, target: dict, data: bytes) -> httpx.Response:
    """PUT ``data`` to the upload URL of ``target`` (from :func:`lora_upload_url`)."""
    return await put_to(api, target["upload_url"], data, target["headers"])


async def upload_zip(
    api: httpx.AsyncClient, key: str, data: bytes | None, trigger: str = "tadz"
) -> str:
    """Ask for an upload URL and PUT ``data`` to it (``None``: leave it pending)."""
    body = await lora_upload_url(api, key, trigger)
    if data is not None:
        put = await put_zip(api, body, data)
        assert put.status_code == 200, put.text
    return str(body["id"])


async def wait_final(api: httpx.AsyncClient, key: str, upload_id: str) -> dict:
    """Poll the training until it is final (the in-process worker trains it)."""
    seen = set()
    for _ in polls():
        body = (await api.get(f"/api/loras/trainings/{upload_id}", headers=h(key))).json()
        seen.add(body["status"])
        if body["status"] in ("succeeded", "failed", "canceled"):
            body["seen"] = seen
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"training never finished; last: {body}")


@pytest.fixture
async def engine_app(tmp_path: Path):
    async with running_engine(settings_for(tmp_path)) as pair:
        yield pair


@pytest.fixture
async def trained(engine_app: tuple[FastAPI, httpx.AsyncClient]) -> tuple[str, str, dict]:
    """Alice's key, her upload id and its finished training."""
    _, api = engine_app
    key = await register(api, "alice@example.com")
    upload_id = await upload_zip(api, key, good_zip(4))
    started = await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
    assert started.status_code == 202, started.text
    final = await wait_final(api, key, upload_id)
    assert final["status"] == "succeeded", final
    return key, upload_id, final


@local_storage_only
async def test_training_starts_at_once_and_is_never_started_twice(tmp_path: Path) -> None:
    async with running_engine(settings_for(tmp_path, workers=0)) as (app, api):
        key = await register(api)
        upload_id = await upload_zip(api, key, good_zip(4))
        first = await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        assert first.status_code == 202, first.text
        body = first.json()
        assert body["status"] == "starting" and body["progress"] == 0
        assert body["upload_id"] == upload_id and body["trigger_word"] == "tadz"
        assert {"id", "upload_id", "status", "created_at", "updated_at"} <= set(body)
        again = await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        assert again.status_code == 202 and again.json()["id"] == body["id"]
        services = services_of(app)
        async with services.db.session() as s:
            jobs = await s.scalar(select(func.count()).where(Job.kind == TRAIN_KIND))
        assert jobs == 1
        uploads = (await api.get("/api/loras/uploads", headers=h(key))).json()
        assert uploads[0]["status"] == "processed"

        assert await anyio.to_thread.run_sync(services.worker.drain) == 1
        done = (await api.get(f"/api/loras/trainings/{upload_id}", headers=h(key))).json()
        assert done["status"] == "succeeded" and done["progress"] == 100
        assert done["started_at"] and done["completed_at"] and done["error"] is None
        lora = services.storage.artifact_path(f"loras/{body['id']}.safetensors")
        assert lora.is_file()
        # Trained: starting it again is still the same record and no new job.
        third = await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        assert third.json()["id"] == body["id"] and third.json()["status"] == "succeeded"
        async with services.db.session() as s:
            assert await s.scalar(select(func.count()).where(Job.kind == TRAIN_KIND)) == 1


async def test_progress_is_written_while_training(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, workers=0, training={**IMAGE["training"], "steps": 30})
    async with running_engine(settings) as (app, api):
        key = await register(api)
        upload_id = await upload_zip(api, key, good_zip(4))
        await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        drained = asyncio.ensure_future(anyio.to_thread.run_sync(services_of(app).worker.drain))
        seen: list[tuple[str, int]] = []
        while not drained.done():
            body = (await api.get(f"/api/loras/trainings/{upload_id}", headers=h(key))).json()
            seen.append((body["status"], body["progress"]))
            await asyncio.sleep(0.01)
        await drained
        processing = [p for s, p in seen if s == "processing"]
        assert processing, seen
        assert any(0 < p < 100 for p in processing), seen


BAD_ZIPS = [
    (
        {"../x.png": image_bytes(0), **{f"i{i}.png": image_bytes(i) for i in range(4)}},
        ["'../x.png': unsafe path"],
    ),
    ({f"i{i}.png": image_bytes(i) for i in range(2)}, ["2 usable image(s)"]),
    (
        {"a.png": b"not a png", "b.jpg": b"nor a jpeg", "c.txt": b"hi"},
        ["'a.png': it does not decode", "'b.jpg': it does not decode", "0 usable image(s)"],
    ),
]


@local_storage_only
@pytest.mark.parametrize(("entries", "expected"), BAD_ZIPS)
async def test_a_bad_zip_is_refused_at_upload_with_every_problem(
    engine_app: tuple[FastAPI, httpx.AsyncClient], entries: dict, expected: list[str]
) -> None:
    app, api = engine_app
    storage = services_of(app).storage
    key = await register(api)
    target = await lora_upload_url(api, key)
    resp = await put_zip(api, target, build_zip(entries))
    assert resp.status_code == 400, resp.text
    detail = resp.json()["detail"]
    assert detail.startswith("the zip cannot be used"), detail
    for part in expected:
        assert part in detail
    # Nothing kept, the upload is still waiting for its bytes and says why.
    assert not storage.upload_path(target["id"]).exists()
    assert not any((storage.root / "tmp").iterdir())
    listed = (await api.get("/api/loras/uploads", headers=h(key))).json()
    assert listed[0]["status"] == "pending" and expected[0] in listed[0]["error"]
    resp = await api.post(f"/api/loras/trainings/{target['id']}", headers=h(key))
    assert resp.status_code == 400 and "PUT the zip" in resp.json()["detail"]
    # A fixed zip PUT to the same URL is kept, and training starts.
    fixed = await put_zip(api, target, good_zip(4))
    assert fixed.status_code == 200 and fixed.json()["status"] == "uploaded", fixed.text
    listed = (await api.get("/api/loras/uploads", headers=h(key))).json()
    assert listed[0]["status"] == "uploaded" and listed[0]["error"] is None
    started = await api.post(f"/api/loras/trainings/{target['id']}", headers=h(key))
    assert started.status_code == 202, started.text


@local_storage_only
async def test_a_bad_zip_put_over_a_good_one_leaves_the_good_one(
    engine_app: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, api = engine_app
    key = await register(api)
    target = await lora_upload_url(api, key)
    good = good_zip(4)
    assert (await put_zip(api, target, good)).status_code == 200
    bad = await put_zip(api, target, build_zip({"a.png": image_bytes(0)}))
    assert bad.status_code == 400 and "1 usable image(s)" in bad.json()["detail"]
    assert services_of(app).storage.upload_path(target["id"]).read_bytes() == good
    listed = (await api.get("/api/loras/uploads", headers=h(key))).json()
    assert listed[0]["status"] == "uploaded" and listed[0]["size_bytes"] == len(good)


@local_storage_only
@pytest.mark.parametrize(("entries", "expected"), BAD_ZIPS)
async def test_a_stored_bad_zip_is_400_with_every_problem_when_training_starts(
    engine_app: tuple[FastAPI, httpx.AsyncClient], entries: dict, expected: list[str]
) -> None:
    """Zips stored before uploads were checked are checked again when training starts."""
    app, api = engine_app
    key = await register(api)
    upload_id = await upload_zip(api, key, good_zip(4))
    services_of(app).storage.upload_path(upload_id).write_bytes(build_zip(entries))
    resp = await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
    assert resp.status_code == 400, resp.text
    for part in expected:
        assert part in resp.json()["detail"]
    # Nothing started, and the upload can be fixed by PUTting a good zip again.
    assert (await api.get(f"/api/loras/trainings/{upload_id}", headers=h(key))).status_code == 404
    listed = (await api.get("/api/loras/uploads", headers=h(key))).json()
    assert listed[0]["status"] == "uploaded" and expected[0] in listed[0]["error"]


@local_storage_only
async def test_corrupt_and_bomb_zips_are_400_at_upload(
    engine_app: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, api = engine_app
    key = await register(api)
    corrupt = await lora_upload_url(api, key)
    resp = await put_zip(api, corrupt, good_zip(4)[:-40])
    assert resp.status_code == 400 and "not a readable zip" in resp.json()["detail"]
    bomb = build_zip({**{f"i{i}.png": image_bytes(i) for i in range(4)}, "z.png": b"\0" * 2**27})
    bombed = await lora_upload_url(api, key)
    resp = await put_zip(api, bombed, bomb)
    assert resp.status_code == 400 and "zip bomb" in resp.json()["detail"]
    assert not any((services_of(app).storage.root / "uploads").iterdir())


async def test_training_needs_bytes_and_an_owned_lora_upload(
    engine_app: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, api = engine_app
    alice = await register(api, "alice@example.com")
    bob = await register(api, "bob@example.com")
    pending = await upload_zip(api, alice, None)
    resp = await api.post(f"/api/loras/trainings/{pending}", headers=h(alice))
    assert resp.status_code == 400 and "PUT the zip" in resp.json()["detail"]
    owned = await upload_zip(api, alice, good_zip(4))
    assert (await api.post(f"/api/loras/trainings/{owned}", headers=h(bob))).status_code == 404
    missing = "00000000-0000-4000-8000-000000000000"
    assert (await api.post(f"/api/loras/trainings/{missing}", headers=h(alice))).status_code == 404
    assert (await api.post(f"/api/loras/trainings/{owned}")).status_code == 401


async def test_generation_with_both_paths_lists_and_ownership(
    engine_app: tuple[FastAPI, httpx.AsyncClient], trained: tuple[str, str, dict]
) -> None:
    _, api = engine_app
    key, upload_id, training = trained
    lora_id = training["id"]
    assert training["seen"] <= {"starting", "processing", "succeeded"}

    first = await api.post(
        f"/api/loras/generations/{upload_id}", json={"prompt": "a cat"}, headers=h(key)
    )
    assert first.status_code == 200, first.text
    g1 = first.json()
    assert g1["prompt"] == "a cat" and g1["enhanced_prompt"].startswith("tadz, a cat, ")
    assert g1["lora_id"] == lora_id and g1["upload_id"] == upload_id
    assert "noise" in g1["model"] and g1["width"] == g1["height"] == 32
    img = await get_from(api, g1["url"])
    assert img.status_code == 200
    assert Image.open(io.BytesIO(img.content)).format == "PNG"

    second = await api.post(
        f"/api/loras/{lora_id}/generations", json={"prompt": "a dog, tadz"}, headers=h(key)
    )
    assert second.status_code == 200, second.text
    g2 = second.json()
    assert g2["enhanced_prompt"].startswith("a dog, tadz, ")

    listed = (await api.get("/api/loras/generations", headers=h(key))).json()
    assert isinstance(listed, list) and [g["id"] for g in listed] == [g2["id"], g1["id"]]
    paged = (await api.get("/api/loras/generations?limit=1&offset=1", headers=h(key))).json()
    assert [g["id"] for g in paged] == [g1["id"]]
    for lid in (lora_id, upload_id):
        per = (await api.get(f"/api/loras/{lid}/generations", headers=h(key))).json()
        assert [g["id"] for g in per] == [g2["id"], g1["id"]]
    one = await api.get(f"/api/loras/generations/{g1['id']}", headers=h(key))
    assert one.status_code == 200 and one.json()["enhanced_prompt"] == g1["enhanced_prompt"]

    trainings = (await api.get("/api/loras/trainings", headers=h(key))).json()
    assert trainings["total"] == 1 and trainings["limit"] == 20 and trainings["offset"] == 0
    assert trainings["trainings"][0]["id"] == lora_id

    bob = await register(api, "bob@example.com")
    assert (await api.get(f"/api/loras/trainings/{upload_id}", headers=h(bob))).status_code == 404
    assert (await api.get("/api/loras/trainings", headers=h(bob))).json()["total"] == 0
    assert (await api.get("/api/loras/generations", headers=h(bob))).json() == []
    for path in (f"/api/loras/generations/{g1['id']}", f"/api/loras/{lora_id}/generations"):
        assert (await api.get(path, headers=h(bob))).status_code == 404
    for path in (f"/api/loras/generations/{upload_id}", f"/api/loras/{lora_id}/generations"):
        resp = await api.post(path, json={"prompt": "steal"}, headers=h(bob))
        assert resp.status_code == 404


async def test_generation_before_training_succeeds_is_400(
    tmp_path: Path,
) -> None:
    async with running_engine(settings_for(tmp_path, workers=0)) as (_, api):
        key = await register(api)
        upload_id = await upload_zip(api, key, good_zip(4))
        not_started = await api.post(
            f"/api/loras/generations/{upload_id}", json={"prompt": "x"}, headers=h(key)
        )
        assert not_started.status_code == 404
        await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        waiting = await api.post(
            f"/api/loras/generations/{upload_id}", json={"prompt": "x"}, headers=h(key)
        )
        assert waiting.status_code == 400
        assert "waiting to start" in waiting.json()["detail"]


@pytest.mark.parametrize("body", [{}, {"prompt": ""}, {"prompt": "x" * 1001}, {"text": "hi"}])
async def test_prompt_validation_is_422(
    engine_app: tuple[FastAPI, httpx.AsyncClient], body: dict
) -> None:
    _, api = engine_app
    key = await register(api)
    resp = await api.post(f"/api/loras/{'0' * 8}/generations", json=body, headers=h(key))
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"][0] == "body"


@local_storage_only
async def test_a_failed_training_says_why_and_can_be_started_again(
    engine_app: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, api = engine_app
    key = await register(api)
    upload_id = await upload_zip(api, key, good_zip(4))
    path = services_of(app).storage.upload_path(upload_id)
    saved = path.read_bytes()
    # The zip vanishes between the check and the worker: the job fails with a reason.
    services_of(app).queue.stop_consumer()
    first = (await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))).json()
    path.unlink()
    services_of(app).queue.start_consumer(1)
    failed = await wait_final(api, key, upload_id)
    assert failed["status"] == "failed" and "upload it again" in failed["error"]
    path.write_bytes(saved)
    retry = await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
    assert retry.status_code == 202 and retry.json()["id"] == first["id"]
    done = await wait_final(api, key, upload_id)
    assert done["status"] == "succeeded" and done["error"] is None


async def test_a_canceled_training_reads_canceled_and_can_be_started_again(
    tmp_path: Path,
) -> None:
    async with running_engine(settings_for(tmp_path, workers=0)) as (app, api):
        services = services_of(app)
        key = await register(api)
        upload_id = await upload_zip(api, key, good_zip(4))
        first = (await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))).json()
        async with services.db.session() as s:
            job_id = await s.scalar(select(Job.id).where(Job.kind == TRAIN_KIND))
        assert await services.jobs.cancel(job_id)
        await anyio.to_thread.run_sync(services.worker.drain)
        canceled = (await api.get(f"/api/loras/trainings/{upload_id}", headers=h(key))).json()
        assert canceled["status"] == "canceled" and canceled["completed_at"]
        resp = await api.post(
            f"/api/loras/generations/{upload_id}", json={"prompt": "x"}, headers=h(key)
        )
        assert resp.status_code == 400 and "canceled" in resp.json()["detail"]
        again = await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        assert again.status_code == 202
        assert again.json()["id"] == first["id"] and again.json()["status"] == "starting"
        assert await anyio.to_thread.run_sync(services.worker.drain) == 1
        done = (await api.get(f"/api/loras/trainings/{upload_id}", headers=h(key))).json()
        assert done["status"] == "succeeded"


@local_storage_only
async def test_canceling_a_running_training_stops_it_and_keeps_no_lora(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, workers=0, training={**IMAGE["training"], "steps": 5000})
    async with running_engine(settings) as (app, api):
        services = services_of(app)
        key = await register(api)
        upload_id = await upload_zip(api, key, good_zip(4))
        training = (await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))).json()
        drained = asyncio.ensure_future(anyio.to_thread.run_sync(services.worker.drain))
        body = training
        while not (body["status"] == "processing" and body["progress"] > 3):
            assert not drained.done(), "training finished before it could be canceled"
            await asyncio.sleep(0.02)
            body = (await api.get(f"/api/loras/trainings/{upload_id}", headers=h(key))).json()
        async with services.db.session() as s:
            job_id = await s.scalar(select(Job.id).where(Job.kind == TRAIN_KIND))
        assert await services.jobs.cancel(job_id)
        await drained
        final = (await api.get(f"/api/loras/trainings/{upload_id}", headers=h(key))).json()
        assert final["status"] == "canceled" and final["progress"] < 100
        lora = services.storage.artifact_path(f"loras/{training['id']}.safetensors")
        assert not lora.exists()


async def test_a_generation_that_outlives_the_wait_is_504_and_appears_later(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=0, wait_timeout_seconds=0.01),
        image=IMAGE,
    )
    async with running_engine(settings) as (app, api):
        worker = services_of(app).worker
        key = await register(api)
        upload_id = await upload_zip(api, key, good_zip(4))
        await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        assert await anyio.to_thread.run_sync(worker.drain) == 1
        resp = await api.post(
            f"/api/loras/generations/{upload_id}", json={"prompt": "a cat"}, headers=h(key)
        )
        assert resp.status_code == 504, resp.text
        detail = resp.json()["detail"]
        assert detail.startswith("the image is still being drawn"), detail
        promised = detail.rsplit(" as ", 1)[1]
        assert await anyio.to_thread.run_sync(worker.drain) == 1
        listed = (await api.get("/api/loras/generations", headers=h(key))).json()
        assert [g["id"] for g in listed] == [promised]


async def test_members_train_and_generate_in_any_order_through_one_worker(
    engine_app: tuple[FastAPI, httpx.AsyncClient], trained: tuple[str, str, dict]
) -> None:
    """Issue 12 item 3: after one generation, every later training failed for everyone."""
    _, api = engine_app
    alice, a_upload, _ = trained

    async def generate(key: str, upload_id: str) -> None:
        resp = await api.post(
            f"/api/loras/generations/{upload_id}", json={"prompt": "a cat"}, headers=h(key)
        )
        assert resp.status_code == 200, resp.text

    async def train(key: str, upload_id: str) -> None:
        started = await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        assert started.status_code == 202, started.text
        final = await wait_final(api, key, upload_id)
        assert final["status"] == "succeeded", final

    await generate(alice, a_upload)
    bob = await register(api, "bob@example.com")
    b_upload = await upload_zip(api, bob, good_zip(5), trigger="pudgy")
    await train(bob, b_upload)
    await generate(alice, a_upload)
    await generate(bob, b_upload)
    second = await upload_zip(api, alice, good_zip(4))
    await train(alice, second)
    await generate(bob, b_upload)
