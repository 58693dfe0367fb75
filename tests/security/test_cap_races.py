"""Counted limits hold under simultaneous requests (issue 24, item 6).

Counting a member's pending jobs or unused upload URLs and then inserting one were two
steps: 40 simultaneous speech requests from one member were all queued (cap 16), and 60
simultaneous upload-URL requests left 23 held (cap 20). Each count and insert is one unit
now (the member's row locked first), on SQLite and on PostgreSQL:
``TADA_TEST_DB=postgres python -m pytest tests/security/test_cap_races.py``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from engine.jobs import TooManyPendingJobs
from engine.models import Job, Upload, User
from engine.settings import JobSettings, LimitSettings
from engine.voice.models import Voice
from tests.conftest import make_settings, register, running_engine, services_of
from tests.engine.voice.conftest import h

JOB_CAP = 16
UPLOAD_CAP = 20


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """No workers (an accepted job stays queued and counts), a short wait for each."""
    settings = make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=0, wait_timeout_seconds=0.5),
        limits=LimitSettings(
            register_per_client="",
            register_global="",
            requests_per_client="",
            max_pending_jobs=JOB_CAP,
            max_pending_uploads=UPLOAD_CAP,
        ),
    )
    async with running_engine(settings) as (app, _):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as api:
            yield app, api


async def user_id_of(app: FastAPI, email: str = "alice@example.com") -> str:
    async with services_of(app).db.session() as s:
        uid = await s.scalar(select(User.id).where(User.email == email))
    assert uid is not None
    return uid


async def count(app: FastAPI, model: type[Job] | type[Upload], user_id: str) -> int:
    async with services_of(app).db.session() as s:
        n = await s.scalar(select(func.count()).select_from(model).where(model.user_id == user_id))
    return n or 0


async def test_simultaneous_speech_requests_queue_at_most_the_cap(
    engine: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, api = engine
    key = await register(api)
    uid = await user_id_of(app)
    async with services_of(app).db.session.begin() as s:
        voice = Voice(
            user_id=uid,
            name="v",
            backend="reference",
            sample_seconds=5.0,
            speech_seconds=5.0,
            median_f0_hz=120.0,
            profile={},
        )
        s.add(voice)
    answers = await asyncio.gather(
        *(
            api.post(
                f"/api/voices/{voice.id}/generations", json={"text": f"hi {i}"}, headers=h(key)
            )
            for i in range(40)
        )
    )
    codes = Counter(r.status_code for r in answers)
    queued = await count(app, Job, uid)
    print(f"40 simultaneous speech requests, cap {JOB_CAP}: {dict(codes)}, {queued} queued")
    assert queued == JOB_CAP, (queued, codes)
    assert codes[429] == 40 - JOB_CAP, codes
    assert set(codes) <= {429, 504}, codes  # accepted ones are still waiting for a worker


async def test_simultaneous_job_submissions_hold_the_cap(
    engine: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, api = engine
    await register(api)
    await register(api, "bob@example.com")
    alice, bob = await user_id_of(app), await user_id_of(app, "bob@example.com")
    jobs = services_of(app).jobs
    results = await asyncio.gather(
        *(jobs.submit("voice.generate", {}, uid) for uid in [alice, bob] * 50),
        return_exceptions=True,
    )
    refused = sum(isinstance(r, TooManyPendingJobs) for r in results)
    others = [r for r in results if isinstance(r, BaseException)]
    assert not [r for r in others if not isinstance(r, TooManyPendingJobs)], others
    assert (await count(app, Job, alice), await count(app, Job, bob)) == (JOB_CAP, JOB_CAP)
    assert refused == 100 - 2 * JOB_CAP
    await jobs.submit("voice.generate", {}, None)  # the engine's own jobs are not capped


async def test_simultaneous_upload_url_requests_hold_the_cap(
    engine: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, api = engine
    key = await register(api)
    uid = await user_id_of(app)

    async def ask(i: int) -> httpx.Response:
        kind = "voices" if i % 2 else "loras"
        params = {"name": f"n{i}", "file_name": "f.wav" if kind == "voices" else "f.zip"}
        if kind == "loras":
            params["trigger_word"] = "tadz"
        return await api.post(f"/api/{kind}/uploads/url", params=params, headers=h(key))

    answers = await asyncio.gather(*(ask(i) for i in range(60)))
    codes = Counter(r.status_code for r in answers)
    held = await count(app, Upload, uid)
    print(f"60 simultaneous upload-URL requests, cap {UPLOAD_CAP}: {dict(codes)}, {held} held")
    assert held == UPLOAD_CAP, (held, codes)
    assert codes == Counter({200: UPLOAD_CAP, 429: 60 - UPLOAD_CAP}), codes


async def test_simultaneous_puts_hold_the_storage_limit(tmp_path: Path) -> None:
    """Each PUT reserves the bytes it may write under the member's lock: two PUTs that
    each fit but together do not are not both kept (they used to be: each saw the room
    the other had not recorded yet)."""
    limit = 3 * 1024 * 1024
    settings = make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=0, wait_timeout_seconds=0.5),
        limits=LimitSettings(
            register_per_client="",
            register_global="",
            requests_per_client="",
            max_stored_bytes_per_user=limit,
        ),
    )
    async with running_engine(settings) as (app, _):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as api:
            key = await register(api)
            uid = await user_id_of(app)
            made = [
                (
                    await api.post(
                        "/api/voices/uploads/url",
                        params={"name": f"n{i}", "file_name": "f.wav"},
                        headers=h(key),
                    )
                ).json()
                for i in range(4)
            ]
            body = b"RIFF" + b"\0" * (2 * 1024 * 1024)  # 2 MB each: one fits, two do not

            async def put(upload: dict[str, object]) -> httpx.Response:
                url = httpx.URL(str(upload["upload_url"]))
                return await api.put(url.raw_path.decode(), content=body, headers=upload["headers"])

            answers = await asyncio.gather(*(put(u) for u in made))
    codes = Counter(r.status_code for r in answers)
    async with services_of(app).db.session() as s:
        kept = await s.scalar(
            select(func.coalesce(func.sum(Upload.size_bytes), 0)).where(Upload.user_id == uid)
        )
    print(f"4 simultaneous 2 MB PUTs, limit 3 MB: {dict(codes)}, {kept} bytes kept")
    assert int(kept or 0) <= limit, (kept, codes)
    assert codes[200] == 1 and codes[413] == 3, codes
