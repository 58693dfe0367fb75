"""The speech stream extension (``POST /api/voices/{voice_id}/speech/stream``) over real HTTP.

uvicorn serves the engine on loopback in the test's own event loop (the in-process ASGI
transport hands a response over only once it is complete, which would hide the streaming).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select

from engine.app import create_app
from engine.models import Job, JobStatus
from engine.settings import JobSettings
from engine.voice.reference import FIRST_PIECE_WORDS, stream_pieces
from engine.voice.settings import voice_settings
from tests.conftest import backend_for, make_settings, register, services_of
from tests.engine.voice.conftest import Speaker, clone, h
from tests.waiting import CEILING_S, async_wait_until

THREE_SENTENCES = (
    "The old lighthouse keeper climbed the stairs every evening. Ships far out at sea "
    "counted on him. He never once missed a night in forty years."
)


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """``app`` under uvicorn on a free loopback port, in this loop; its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", log_config=None, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await async_wait_until(lambda: server.started or task.done(), "uvicorn started")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def engine_http(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = make_settings(
        tmp_path / "engine", jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S)
    )
    app = create_app(settings, voice_backend=backend_for(voice_settings(settings.voice)))
    async with served(app) as base, httpx.AsyncClient(base_url=base, timeout=CEILING_S) as api:
        yield app, api


def test_a_long_first_sentence_is_cut_where_a_listener_barely_hears_it() -> None:
    pieces = stream_pieces(
        "The old lighthouse keeper climbed the stairs every evening to light the lamp. "
        "Ships counted on him!  Always?"
    )
    assert pieces == [
        # Four words: what a listener waits for is short (about 1.5 s of speech).
        ("The old lighthouse keeper", True),
        ("climbed the stairs every evening to light the lamp.", False),
        ("Ships counted on him!", True),
        ("Always?", True),
    ]
    # Four words would end on "the": the cut moves on to "stairs".
    assert stream_pieces("The keeper climbed the stairs to light the lamp again.") == [
        ("The keeper climbed the stairs", True),
        ("to light the lamp again.", False),
    ]
    comma = "When the sun sets over the quiet harbour, the keeper lights the great lamp again."
    assert stream_pieces(comma)[0] == ("When the sun sets over the quiet harbour,", True)
    short = " ".join(["word"] * (2 * FIRST_PIECE_WORDS)) + "."
    assert stream_pieces(short) == [(short, True)]
    assert stream_pieces("   ") == []


async def test_the_first_audio_arrives_while_the_rest_is_being_made(
    engine_http: tuple[FastAPI, httpx.AsyncClient], speakers: dict[str, Speaker]
) -> None:
    app, api = engine_http
    alice = await register(api, "alice@example.com")
    bob = await register(api, "bob@example.com")
    made = await clone(api, alice, speakers["high"].wav())
    assert made.status_code == 200, made.text
    voice_id = made.json()["id"]
    url = f"/api/voices/{voice_id}/speech/stream"

    # The same door as the synchronous route: a key, the owner's voice, a text to say.
    assert (await api.post(url, json={"text": "Hi."})).status_code == 401
    other = await api.post(url, json={"text": "Hi."}, headers=h(bob))
    assert (other.status_code, other.json()) == (404, {"detail": "voice not found"})
    empty = await api.post(url, json={"text": "  ...  "}, headers=h(alice))
    assert empty.status_code == 422, empty.text

    async with api.stream("POST", url, json={"text": THREE_SENTENCES}, headers=h(alice)) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "audio/wav"
        generation_id = resp.headers["x-generation-id"]
        chunks = resp.aiter_raw()
        first = await anext(chunks)
        # The first piece is here while the job still makes the later sentences (its
        # progress reaches 85 % once the last piece is made).
        [job] = await _jobs_of(app)
        assert job.status == JobStatus.PROCESSING.value
        assert job.progress < 85, job.progress
        rest = [c async for c in chunks]
    body = first + b"".join(rest)
    assert body[:4] == b"RIFF" and body[8:16] == b"WAVEfmt "
    (rate,) = struct.unpack("<I", body[24:28])
    pcm = body[44:]

    done = await api.get(f"/api/voices/generations/{generation_id}", headers=h(alice))
    assert done.status_code == 200, done.text
    generation = done.json()
    assert generation["text"] == THREE_SENTENCES
    # What was streamed is what was recorded (the stored file is those pieces).
    assert abs(len(pcm) / 2 / rate - generation["duration_seconds"]) < 0.01
    stored = await api.get(generation["audio_url"])
    assert stored.status_code == 200 and stored.content[:3] in (b"ID3", b"\xff\xfb")
    # Each piece was taken away once sent: nothing of the stream is left in storage.
    artifacts = Path(services_of(app).settings.data_dir)
    left = await asyncio.to_thread(
        lambda: [p for p in artifacts.rglob("*.stream/*") if p.is_file()]
    )
    assert not left
    # Another member cannot read it.
    hidden = await api.get(f"/api/voices/generations/{generation_id}", headers=h(bob))
    assert hidden.status_code == 404


async def _jobs_of(app: FastAPI) -> list[Job]:
    async with services_of(app).db.session() as s:
        return list((await s.scalars(select(Job).where(Job.kind == "voice.generate"))).all())


async def test_the_stream_is_marked_as_an_engine_extension(
    engine_http: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, api = engine_http
    doc = (await api.get("/openapi.json")).json()
    op = doc["paths"]["/api/voices/{voice_id}/speech/stream"]["post"]
    assert op["description"].startswith("Engine extension (not in the hosted Ta-da API)")
    assert "audio/wav" in op["responses"]["200"]["content"]
