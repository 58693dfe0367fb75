"""Every ``/api/voices`` endpoint through the real app, worker included."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from engine.models import Job, UploadStatus
from engine.settings import JobSettings
from engine.voice.models import Voice, VoiceGeneration
from engine.voice.similarity import RESEMBLYZER, likeness
from tests.conftest import (
    MAPPED_VOICE,
    TEST_VOICE,
    make_settings,
    register,
    running_engine,
    services_of,
)
from tests.engine.voice.conftest import (
    GENERATION_TEXT,
    Speaker,
    clone,
    fetch,
    h,
    transcode,
    upload_sample,
    wav_bytes,
)
from tests.waiting import CEILING_S, polls

pytestmark = pytest.mark.slow(45)


async def stored_profile(app: FastAPI, voice_id: str) -> dict:
    """What the back end learnt for a voice, as the database holds it."""
    async with services_of(app).db.session() as s:
        voice = await s.get(Voice, voice_id)
    assert voice is not None
    return voice.profile


@pytest.mark.parametrize("voice_section", [MAPPED_VOICE], ids=["mapped"])
async def test_clone_then_read_the_voice_back(
    voice_app: tuple[FastAPI, httpx.AsyncClient],
    vapi: httpx.AsyncClient,
    alice: str,
    speakers: dict[str, Speaker],
) -> None:
    resp = await clone(vapi, alice, speakers["high"].wav(), name="High voice")
    assert resp.status_code == 200, resp.text
    voice = resp.json()
    # The product's conversion: a warp and a spectral mapping learnt and stored with it.
    params = (await stored_profile(voice_app[0], voice["id"]))["params"]
    assert {"stats", "warp", "mapping"} <= set(params), sorted(params)
    assert voice["name"] == "High voice"
    assert {"id", "name", "created_at", "upload_id", "duration_seconds"} <= set(voice)
    assert abs(voice["duration_seconds"] - len(speakers["high"].audio) / 22050) < 0.1
    assert voice["median_f0_hz"] > 200  # the "high" speaker sits far above the base voice
    assert -1.0 <= voice["base_similarity"] <= 1.0
    # The raw cosine stays; beside it the calibrated score members see, and its words.
    assert voice["base_similarity_score"] == RESEMBLYZER.percent(voice["base_similarity"])
    assert voice["base_likeness"] == likeness(voice["base_similarity_score"])

    assert (await vapi.get(f"/api/voices/{voice['id']}", headers=h(alice))).json() == voice
    assert (await vapi.get("/api/voices", headers=h(alice))).json() == [voice]
    uploads = (await vapi.get("/api/voices/uploads", headers=h(alice))).json()
    assert [(u["id"], u["status"]) for u in uploads] == [(voice["upload_id"], "processed")]


async def test_a_compressed_sample_clones_too(
    vapi: httpx.AsyncClient, alice: str, speakers: dict[str, Speaker], tmp_path: Path
) -> None:
    data = transcode(speakers["low"].wav(), "m4a", tmp_path)
    resp = await clone(vapi, alice, data, file_name="take.m4a")
    assert resp.status_code == 200, resp.text
    assert resp.json()["median_f0_hz"] < 160


async def test_voices_are_listed_newest_first(
    vapi: httpx.AsyncClient, alice: str, speakers: dict[str, Speaker]
) -> None:
    first = (await clone(vapi, alice, speakers["high"].wav(), name="one")).json()
    second = (await clone(vapi, alice, speakers["low"].wav(), name="two")).json()
    listed = (await vapi.get("/api/voices", headers=h(alice))).json()
    assert [v["id"] for v in listed] == [second["id"], first["id"]]


async def test_clone_refusals(
    vapi: httpx.AsyncClient, alice: str, bob: str, speakers: dict[str, Speaker]
) -> None:
    # Unknown id, and another user's upload: both 404.
    missing = await vapi.post(
        "/api/voices/uploads",
        params={"upload_id": "00000000-0000-4000-8000-000000000000"},
        headers=h(alice),
    )
    assert missing.status_code == 404
    bobs = await upload_sample(vapi, bob, speakers["high"].wav())
    other = await vapi.post("/api/voices/uploads", params={"upload_id": bobs}, headers=h(alice))
    assert other.status_code == 404
    assert other.json() == {"detail": "upload not found"}

    # An upload URL issued but nothing PUT yet: 400 "not uploaded".
    url = await vapi.post(
        "/api/voices/uploads/url", params={"name": "v", "file_name": "a.wav"}, headers=h(alice)
    )
    pending = await vapi.post(
        "/api/voices/uploads", params={"upload_id": url.json()["id"]}, headers=h(alice)
    )
    assert pending.status_code == 400
    assert "not uploaded" in pending.json()["detail"]

    # Used once: the second try is 409, and no second voice appears.
    upload_id = await upload_sample(vapi, alice, speakers["high"].wav())
    ok = await vapi.post("/api/voices/uploads", params={"upload_id": upload_id}, headers=h(alice))
    assert ok.status_code == 200
    again = await vapi.post(
        "/api/voices/uploads", params={"upload_id": upload_id}, headers=h(alice)
    )
    assert again.status_code == 409
    assert len((await vapi.get("/api/voices", headers=h(alice))).json()) == 1

    # The query parameter is required (FastAPI's 422 shape), and a key is needed.
    no_id = await vapi.post("/api/voices/uploads", headers=h(alice))
    assert no_id.status_code == 422
    assert no_id.json()["detail"][0]["loc"] == ["query", "upload_id"]
    assert (
        await vapi.post("/api/voices/uploads", params={"upload_id": upload_id})
    ).status_code == 401


async def test_two_racing_clones_of_one_upload_make_one_voice(
    tmp_path: Path, speakers: dict[str, Speaker]
) -> None:
    settings = make_settings(
        tmp_path, jobs=JobSettings(in_process_workers=2, wait_timeout_seconds=CEILING_S)
    )
    async with running_engine(settings) as (_, api):
        key = await register(api)
        upload_id = await upload_sample(api, key, speakers["low"].wav())
        answers = await asyncio.gather(
            *[
                api.post("/api/voices/uploads", params={"upload_id": upload_id}, headers=h(key))
                for _ in range(2)
            ]
        )
        assert sorted(a.status_code for a in answers) == [200, 409]
        assert len((await api.get("/api/voices", headers=h(key))).json()) == 1


def _rate_audio(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0, 0.1, int(seconds * 22050)).astype(np.float32)


@pytest.mark.parametrize(
    ("kind", "detail"),
    [
        ("garbage", "not audio we can decode"),
        ("short", "record at least 3 s"),
        ("silent", "silent"),
        ("clipped", "clipped"),
        ("hiss", "stands out from its background"),
        ("bursts", "no voice found"),
        ("tone", "steady tone"),
    ],
)
async def test_unusable_samples_are_refused_and_the_upload_fails(
    vapi: httpx.AsyncClient,
    alice: str,
    base_sample: Speaker,
    kind: str,
    detail: str,
) -> None:
    rng = np.random.default_rng(7)
    rate = base_sample.sample_rate
    t = np.arange(6 * rate) / rate
    # Syllable-rate on/off gating: sound that comes and goes like speech does.
    gate = (np.sin(2 * np.pi * 3 * t) > 0).astype(np.float32)
    data = {
        "garbage": b"\x00\x01not audio" * 500,
        "short": wav_bytes(base_sample.audio[: 2 * rate], rate),
        "silent": wav_bytes(_rate_audio(6, rng) * 0.002, rate),
        "clipped": wav_bytes(np.clip(base_sample.audio * 30, -1, 1), rate),
        "hiss": wav_bytes(_rate_audio(6, rng), rate),
        "bursts": wav_bytes(_rate_audio(6, rng) * gate, rate),
        "tone": wav_bytes((0.3 * np.sin(2 * np.pi * 180 * t) * gate).astype(np.float32), rate),
    }[kind]
    upload_id = await upload_sample(vapi, alice, data)
    resp = await vapi.post("/api/voices/uploads", params={"upload_id": upload_id}, headers=h(alice))
    assert resp.status_code == 400, resp.text
    assert detail in resp.json()["detail"]
    uploads = (await vapi.get("/api/voices/uploads", headers=h(alice))).json()
    assert uploads[0]["status"] == UploadStatus.FAILED.value
    assert detail in uploads[0]["error"]
    assert (await vapi.get("/api/voices", headers=h(alice))).json() == []
    # A refused upload stays refused: asking again says so, with the reason.
    again = await vapi.post(
        "/api/voices/uploads", params={"upload_id": upload_id}, headers=h(alice)
    )
    assert again.status_code == 409
    assert detail in again.json()["detail"]


@pytest.mark.parametrize(
    ("path", "voice_section"),
    [
        # The product's conversion once: the mapping stored with the voice, spoken from it.
        ("/api/voices/{id}/generations", MAPPED_VOICE),
        ("/api/voices/generations/{id}", TEST_VOICE),
    ],
    ids=["voices-id-generations-mapped", "voices-generations-id"],
)
async def test_generate_on_both_paths_and_fetch_the_audio(
    voice_app: tuple[FastAPI, httpx.AsyncClient],
    vapi: httpx.AsyncClient,
    alice: str,
    speakers: dict[str, Speaker],
    path: str,
    voice_section: dict[str, object],
) -> None:
    voice = (await clone(vapi, alice, speakers["low"].wav())).json()
    params = (await stored_profile(voice_app[0], voice["id"]))["params"]
    assert ("mapping" in params) is (voice_section is MAPPED_VOICE), sorted(params)
    resp = await vapi.post(
        path.format(id=voice["id"]), json={"text": f"  {GENERATION_TEXT}  "}, headers=h(alice)
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["url"] == body["audio_url"]
    assert body["voice_id"] == voice["id"]
    assert body["text"] == GENERATION_TEXT
    assert body["format"] == "mp3"
    assert 2.0 < body["duration_seconds"] < 20.0
    assert 0.0 < body["similarity"] <= 1.0
    assert body["similarity_score"] == RESEMBLYZER.percent(body["similarity"])
    assert body["likeness"] == likeness(body["similarity_score"])
    audio = await fetch(vapi, body["audio_url"])
    assert audio.status_code == 200
    assert audio.content[:3] == b"ID3" or audio.content[:2] == b"\xff\xfb"
    # The signature binds the URL to this artifact.
    tampered = body["audio_url"].replace(body["id"], voice["id"])
    assert (await fetch(vapi, tampered)).status_code == 403

    one = await vapi.get(f"/api/voices/generations/{body['id']}", headers=h(alice))
    assert one.status_code == 200
    assert {k: v for k, v in one.json().items() if k != "audio_url"} == {
        k: v for k, v in body.items() if k not in ("audio_url", "url")
    }


BAD_TEXTS = [
    ("", "1-1000 characters"),
    ("    \n\t ", "1-1000 characters"),
    ("x" * 1001, "1-1000 characters"),
    ("?! ...", "something to say"),
]


async def test_bad_texts_are_422_on_both_paths(
    vapi: httpx.AsyncClient, alice: str, speakers: dict[str, Speaker]
) -> None:
    voice = (await clone(vapi, alice, speakers["low"].wav())).json()
    for path in (
        f"/api/voices/{voice['id']}/generations",
        f"/api/voices/generations/{voice['id']}",
    ):
        for text, message in BAD_TEXTS:
            resp = await vapi.post(path, json={"text": text}, headers=h(alice))
            assert resp.status_code == 422, (path, text)
            detail = resp.json()["detail"][0]
            assert detail["loc"] == ["body", "text"]
            assert message in detail["msg"]
    # Refused before any work: nothing was generated.
    assert (await vapi.get("/api/voices/generations", headers=h(alice))).json()["total"] == 0


async def test_missing_body_is_fastapis_422(vapi: httpx.AsyncClient, alice: str) -> None:
    resp = await vapi.post("/api/voices/some-id/generations", json={}, headers=h(alice))
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "text"]


async def test_another_users_voice_and_generations_are_404(
    vapi: httpx.AsyncClient, alice: str, bob: str, speakers: dict[str, Speaker]
) -> None:
    voice = (await clone(vapi, alice, speakers["low"].wav())).json()
    gen = (
        await vapi.post(
            f"/api/voices/{voice['id']}/generations", json={"text": "Hello."}, headers=h(alice)
        )
    ).json()
    vid, gid = voice["id"], gen["id"]
    for method, path, body in [
        ("GET", f"/api/voices/{vid}", None),
        ("GET", f"/api/voices/{vid}/generations", None),
        ("GET", f"/api/voices/generations/{vid}", None),
        ("GET", f"/api/voices/generations/{gid}", None),
        ("POST", f"/api/voices/{vid}/generations", {"text": "hi"}),
        ("POST", f"/api/voices/generations/{vid}", {"text": "hi"}),
    ]:
        resp = await vapi.request(method, path, json=body, headers=h(bob))
        assert resp.status_code == 404, (method, path, resp.text)
        assert "detail" in resp.json()
    assert (await vapi.get("/api/voices", headers=h(bob))).json() == []
    bobs = (await vapi.get("/api/voices/generations", headers=h(bob))).json()
    assert bobs == {"generations": [], "total": 0, "limit": 20, "offset": 0}
    unknown = await vapi.get("/api/voices/generations/nope", headers=h(alice))
    assert unknown.status_code == 404


async def test_generation_lists_page_newest_first_on_every_path(
    voice_app: tuple[FastAPI, httpx.AsyncClient], alice: str, speakers: dict[str, Speaker]
) -> None:
    app, vapi = voice_app
    low = (await clone(vapi, alice, speakers["low"].wav())).json()
    high = (await clone(vapi, alice, speakers["high"].wav())).json()
    made: list[str] = []
    for i, voice in enumerate([low, low, high, low]):
        resp = await vapi.post(
            f"/api/voices/{voice['id']}/generations",
            json={"text": f"Line number {i + 1}."},
            headers=h(alice),
        )
        assert resp.status_code == 200, resp.text
        made.append(resp.json()["id"])
    # Same-second timestamps must not blur the order: space them out in the database.
    async with services_of(app).db.session.begin() as s:
        for i, gid in enumerate(made):
            stamp = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
            await s.execute(
                update(VoiceGeneration).where(VoiceGeneration.id == gid).values(created_at=stamp)
            )
    newest_first = list(reversed(made))
    low_newest_first = [g for g in newest_first if g != made[2]]

    everything = (await vapi.get("/api/voices/generations", headers=h(alice))).json()
    assert [g["id"] for g in everything["generations"]] == newest_first
    assert (everything["total"], everything["limit"], everything["offset"]) == (4, 20, 0)

    page = (
        await vapi.get(
            "/api/voices/generations", params={"limit": 2, "offset": 1}, headers=h(alice)
        )
    ).json()
    assert [g["id"] for g in page["generations"]] == newest_first[1:3]
    assert (page["total"], page["limit"], page["offset"]) == (4, 2, 1)
    past_end = (
        await vapi.get("/api/voices/generations", params={"offset": 10}, headers=h(alice))
    ).json()
    assert past_end["generations"] == [] and past_end["total"] == 4

    for path in (f"/api/voices/{low['id']}/generations", f"/api/voices/generations/{low['id']}"):
        mine = (await vapi.get(path, params={"limit": 100}, headers=h(alice))).json()
        assert [g["id"] for g in mine["generations"]] == low_newest_first
        assert (mine["total"], mine["limit"]) == (3, 100)
        last = (await vapi.get(path, params={"limit": 1, "offset": 2}, headers=h(alice))).json()
        assert [g["id"] for g in last["generations"]] == low_newest_first[2:]

    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"limit": "x"}):
        for path in (
            "/api/voices/generations",
            f"/api/voices/{low['id']}/generations",
            f"/api/voices/generations/{low['id']}",
        ):
            resp = await vapi.get(path, params=bad, headers=h(alice))
            assert resp.status_code == 422, (path, bad)
            assert resp.json()["detail"][0]["loc"][0] == "query"


async def test_unknown_voice_is_404_on_every_voice_path(
    vapi: httpx.AsyncClient, alice: str
) -> None:
    vid = "00000000-0000-4000-8000-000000000000"
    for method, path in [
        ("GET", f"/api/voices/{vid}"),
        ("GET", f"/api/voices/{vid}/generations"),
        ("POST", f"/api/voices/{vid}/generations"),
        ("POST", f"/api/voices/generations/{vid}"),
    ]:
        resp = await vapi.request(method, path, json={"text": "hi"}, headers=h(alice))
        assert resp.status_code == 404, (method, path)


async def test_fixed_paths_are_not_read_as_voice_ids(vapi: httpx.AsyncClient, alice: str) -> None:
    # Routed to their own handlers, not to GET /api/voices/{voice_id} (which would 404).
    assert (await vapi.get("/api/voices/uploads", headers=h(alice))).json() == []
    listed = (await vapi.get("/api/voices/generations", headers=h(alice))).json()
    assert listed["total"] == 0


async def _poll(api: httpx.AsyncClient, path: str, key: str, ready: str) -> object:
    """GET ``path`` until its JSON has something at ``ready`` (whatever the load)."""
    for _ in polls():
        body = (await api.get(path, headers=h(key))).json()
        if body[ready] if isinstance(body, dict) else body:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} stayed empty")


async def test_work_that_outlives_the_wait_is_504_and_finishes_later(
    tmp_path: Path, speakers: dict[str, Speaker]
) -> None:
    settings = make_settings(
        tmp_path, jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=0.01)
    )
    async with running_engine(settings) as (_, api):
        key = await register(api)
        cloning = await clone(api, key, speakers["low"].wav())
        assert cloning.status_code == 504
        assert "still cloning (job " in cloning.json()["detail"]
        voices = await _poll(api, "/api/voices", key, "")
        assert isinstance(voices, list)
        voice_id = voices[0]["id"]
        resp = await api.post(
            f"/api/voices/{voice_id}/generations", json={"text": "Later."}, headers=h(key)
        )
        assert resp.status_code == 504
        assert "still generating (job " in resp.json()["detail"]
        # The seed's path is the same operation.
        seed = await api.post(
            f"/api/voices/generations/{voice_id}", json={"text": "Later."}, headers=h(key)
        )
        assert seed.status_code == 504 and "still generating (job " in seed.json()["detail"]
        listed = await _poll(api, "/api/voices/generations", key, "total")
        assert isinstance(listed, dict)
        assert listed["generations"][0]["text"] == "Later."


async def test_a_broken_voice_install_fails_fast_and_leaves_the_upload_usable(
    tmp_path: Path, speakers: dict[str, Speaker]
) -> None:
    settings = make_settings(
        tmp_path,
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        voice={"backend": "cpu-reference", "piper_sha256": "0" * 64},
    )
    async with running_engine(settings) as (app, api):
        key = await register(api)
        upload_id = await upload_sample(api, key, speakers["low"].wav())
        resp = await api.post(
            "/api/voices/uploads", params={"upload_id": upload_id}, headers=h(key)
        )
        assert resp.status_code == 500
        assert "voice back end cannot start" in resp.json()["detail"]
        assert "expected SHA-256" in resp.json()["detail"]
        jobs = await api.get("/api/voices/uploads", headers=h(key))
        assert jobs.json()[0]["status"] == UploadStatus.UPLOADED.value
        # Not retried: a wrong model file does not fix itself.
        async with services_of(app).db.session() as s:
            job = (await s.scalars(select(Job))).one()
        assert job.attempts == 1


async def test_a_voice_job_run_again_after_it_finished_records_nothing_twice(
    voice_app: tuple[FastAPI, httpx.AsyncClient], alice: str, speakers: dict[str, Speaker]
) -> None:
    """The queue is at-least-once: a worker that stalls past ``stale_after_seconds`` has
    its job handed to another, which may run it after the first run finished. The second
    run must find the first one's result, not make a second voice or speech."""
    from engine.jobs import JobContext
    from engine.voice.handlers import CLONE_KIND, GENERATE_KIND
    from engine.voice.models import Voice

    app, vapi = voice_app
    voice = (await clone(vapi, alice, speakers["low"].wav())).json()
    spoken = await vapi.post(
        f"/api/voices/{voice['id']}/generations", json={"text": GENERATION_TEXT}, headers=h(alice)
    )
    assert spoken.status_code == 200, spoken.text
    services = services_of(app)
    handlers = services.voice.handlers()
    async with services.db.session() as s:
        jobs = {j.kind: j for j in (await s.scalars(select(Job))).all()}
    for kind, key in ((CLONE_KIND, "voice_id"), (GENERATE_KIND, "generation_id")):
        job = jobs[kind]
        ctx = JobContext(
            job_id=job.id,
            kind=job.kind,
            user_id=job.user_id,
            payload=dict(job.payload),
            attempt=2,
            settings=services.settings,
            storage=services.storage,
            sessions=services.db.sync_session,
        )
        again = await asyncio.to_thread(handlers[kind], ctx)
        first = voice["id"] if kind == CLONE_KIND else spoken.json()["id"]
        assert again[key] == first, kind
    async with services.db.session() as s:
        assert len((await s.scalars(select(Voice))).all()) == 1
        assert len((await s.scalars(select(VoiceGeneration))).all()) == 1
