"""Every text and number is checked once at the engine's boundary (issue 24, item 5).

Hostile requests that answered 500: lone surrogates in raw CESU-8 bytes and in UTF-16 or
UTF-32 JSON bodies (which Python's JSON reader accepts, and the old guard never looked at),
NaN, Infinity and 1e309 in a body field (the 422 answer itself crashed), ``offset`` at or
past 2^63 on the list routes, and a NUL byte in any id (PostgreSQL's text cannot hold
one). Each must be a 4xx that says why, before any job or database write; and no 5xx,
whatever happens, carries an exception's text.

Run on PostgreSQL too: ``TADA_TEST_DB=postgres python -m pytest tests/security/test_boundary.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from engine.models import Job, Upload, User
from engine.settings import JobSettings
from engine.voice.models import Voice
from tests.conftest import make_settings, register, running_engine, services_of
from tests.engine.voice.conftest import h

UNKNOWN = "00000000-0000-4000-8000-000000000000"

# (path, text field) of every route whose JSON body carries text to a model.
TEXT_ROUTES = [
    ("/api/voices/{voice}/generations", "text"),
    ("/api/voices/generations/{voice}", "text"),
    ("/api/loras/{lora}/generations", "prompt"),
    ("/api/loras/generations/{lora}", "prompt"),
    ("/api/demo/tadz", "prompt"),
    ("/api/demo/pudgy", "prompt"),
]
BAD = (400, 413, 415, 422)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, str, str]]:
    """An engine (no workers: a job that got through stays queued, to be counted), a client
    that sees a 500 as a response, Alice's key and a voice of hers (a row: no clone)."""
    settings = make_settings(
        tmp_path / "engine", jobs=JobSettings(in_process_workers=0, wait_timeout_seconds=0.2)
    )
    async with running_engine(settings) as (app, _):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as api:
            key = await register(api)
            async with services_of(app).db.session.begin() as s:
                user_id = await s.scalar(select(User.id))
                assert user_id is not None
                voice = Voice(
                    user_id=user_id,
                    name="v",
                    backend="reference",
                    sample_seconds=5.0,
                    speech_seconds=5.0,
                    median_f0_hz=120.0,
                    profile={},
                )
                s.add(voice)
            yield app, api, key, voice.id


async def jobs_and_uploads(app: FastAPI) -> tuple[int, int]:
    async with services_of(app).db.session() as s:
        jobs = await s.scalar(select(func.count()).select_from(Job))
        uploads = await s.scalar(select(func.count()).select_from(Upload))
    return jobs or 0, uploads or 0


def assert_no_exception_text(resp: httpx.Response) -> None:
    """A 5xx says something went wrong, never what an exception said."""
    if resp.status_code >= 500:
        text = resp.text.replace("Internal Server Error", "")
        for leak in ("Error", "Exception", "Traceback", "psycopg", "asyncpg", "sqlite", "line "):
            assert leak not in text, (resp.status_code, text[:300])


def hostile_bodies(field: str) -> list[tuple[str, bytes, str]]:
    """(what, raw body, content type) whose text holds a lone surrogate, or is not UTF-8."""
    bodies: list[tuple[str, bytes, str]] = []
    for surrogate in ("\ud800", "\udfff", "\ud83d"):
        cesu = surrogate.encode("utf-8", "surrogatepass")  # ED A0 80: CESU-8 / WTF-8
        bodies.append((f"cesu-8 {surrogate!a}", b'{"%s": "hi ' % field.encode() + cesu + b'"}', ""))
        text = f'{{"{field}": "hi {surrogate} there"}}'
        for codec in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "utf-16", "utf-32"):
            bodies.append((f"{codec} {surrogate!a}", text.encode(codec, "surrogatepass"), ""))
    # Valid text in another encoding than UTF-8 (RFC 8259: JSON between systems is UTF-8).
    for codec in ("utf-16-le", "utf-32-be"):
        bodies.append((f"{codec} plain", json.dumps({field: "hello"}).encode(codec), ""))
    # Latin-1 bytes that are not UTF-8.
    bodies.append(("latin-1", b'{"%s": "caf\xe9"}' % field.encode(), ""))
    return [
        (what, body, ctype or "application/json")
        for what, body, ctype in bodies
        for ctype in ("application/json", "")
    ]


async def test_text_that_is_not_utf8_or_holds_a_lone_surrogate_is_refused_at_the_door(
    engine: tuple[FastAPI, httpx.AsyncClient, str, str],
) -> None:
    app, api, key, voice = engine
    tried = held = 0
    failures: list[str] = []
    for template, field in TEXT_ROUTES:
        path = template.format(voice=voice, lora=UNKNOWN)
        for what, body, ctype in hostile_bodies(field):
            headers = {**h(key), **({"Content-Type": ctype} if ctype else {})}
            resp = await api.post(path, content=body, headers=headers)
            tried += 1
            assert_no_exception_text(resp)
            if resp.status_code in BAD and "detail" in resp.json():
                held += 1
            else:
                failures.append(f"{path} {what} {ctype!r}: {resp.status_code} {resp.text[:120]}")
    print(f"not-UTF-8 / lone surrogate bodies: {tried} tried, {held} held")
    assert not failures, f"{len(failures)} of {tried}:\n" + "\n".join(failures[:20])
    assert (await jobs_and_uploads(app))[0] == 0  # no job ever saw one


async def test_a_utf8_json_body_still_works(
    engine: tuple[FastAPI, httpx.AsyncClient, str, str],
) -> None:
    _, api, key, _ = engine
    for body in (b'{"prompt": "caf\xc3\xa9 \xf0\x9f\x8e\xa4"}', b'\xef\xbb\xbf{"prompt": "hi"}'):
        resp = await api.post(
            f"/api/loras/{UNKNOWN}/generations",
            content=body,
            headers={**h(key), "Content-Type": "application/json"},
        )
        assert resp.status_code == 404, resp.text  # read, then the unknown LoRA


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e309", "-1e309", "1E400", "12345e99999"]


async def test_non_finite_numbers_in_a_body_are_422_not_500(
    engine: tuple[FastAPI, httpx.AsyncClient, str, str],
) -> None:
    _, api, key, voice = engine
    tried = held = 0
    failures: list[str] = []
    bodies: list[tuple[str, str]] = []
    for number in NON_FINITE:
        bodies += [
            (f"/api/voices/{voice}/generations", f'{{"text": {number}}}'),
            (f"/api/loras/{UNKNOWN}/generations", f'{{"prompt": {number}}}'),
            (f"/api/loras/{UNKNOWN}/generations", f'{{"prompt": "a cat", "seed": {number}}}'),
            ("/api/demo/tadz", f'{{"prompt": "a cat", "seed": [{number}]}}'),
            ("/api/demo/pudgy", f'{{"prompt": "a", "aspect_ratio": {{"x": {number}}}}}'),
        ]
    for path, body in bodies:
        resp = await api.post(
            path, content=body, headers={**h(key), "Content-Type": "application/json"}
        )
        tried += 1
        assert_no_exception_text(resp)
        if resp.status_code == 422 and resp.json().get("detail"):
            held += 1
        else:
            failures.append(f"{path} {body}: {resp.status_code} {resp.text[:120]}")
    print(f"non-finite numbers: {tried} tried, {held} held")
    assert not failures, "\n".join(failures)


LIST_ROUTES = [
    "/api/voices/generations",
    "/api/voices/{voice}/generations",
    "/api/voices/generations/{voice}",
    "/api/loras/trainings",
    "/api/loras/generations",
    "/api/loras/{lora}/generations",
]
HUGE = [2**63 - 1, 2**63, 2**64, 10**30, 10**400]


async def test_offsets_and_limits_are_bounded_to_what_the_database_holds(
    engine: tuple[FastAPI, httpx.AsyncClient, str, str],
) -> None:
    _, api, key, voice = engine
    tried = held = 0
    failures: list[str] = []
    for template in LIST_ROUTES:
        path = template.format(voice=voice, lora=UNKNOWN)
        for value in HUGE:
            for param in ("offset", "limit"):
                resp = await api.get(path, params={param: str(value)}, headers=h(key))
                tried += 1
                assert_no_exception_text(resp)
                if resp.status_code in (404, 422):
                    held += 1
                else:
                    failures.append(f"{path} {param}={value}: {resp.status_code} {resp.text[:80]}")
        ok = await api.get(path, params={"offset": 10**6}, headers=h(key))
        assert ok.status_code in (200, 404), ok.text  # a large but sane offset is an empty page
    print(f"huge offsets and limits: {tried} tried, {held} held")
    assert not failures, "\n".join(failures)


NUL_IDS = ["a\x00b", "\x00", UNKNOWN[:-1] + "\x00", "%00"]


def id_routes(key: str, raw: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, request options) of every route that reads an id from the caller,
    with the id ``raw`` (percent-encoded in a path, as a client must send a NUL there)."""
    bad = raw.replace("\x00", "%00")
    body: dict[str, Any] = {"json": {"text": "hello", "prompt": "a cat"}, "headers": h(key)}
    auth: dict[str, Any] = {"headers": h(key)}
    signed: dict[str, Any] = {"params": {"expires": 1, "signature": "x"}}
    return [
        ("GET", f"/api/voices/{bad}", auth),
        ("GET", f"/api/voices/{bad}/generations", auth),
        ("GET", f"/api/voices/generations/{bad}", auth),
        ("POST", f"/api/voices/{bad}/generations", body),
        ("POST", f"/api/voices/generations/{bad}", body),
        ("POST", "/api/voices/uploads", {"params": {"upload_id": raw}, "headers": h(key)}),
        ("POST", f"/api/loras/trainings/{bad}", auth),
        ("GET", f"/api/loras/trainings/{bad}", auth),
        ("GET", f"/api/loras/generations/{bad}", auth),
        ("POST", f"/api/loras/generations/{bad}", body),
        ("POST", f"/api/loras/{bad}/generations", body),
        ("GET", f"/api/loras/{bad}/generations", auth),
        (
            "POST",
            f"/api/loras/{UNKNOWN}/generations",
            {"json": {"prompt": "a cat", "variation_of": raw}, "headers": h(key)},
        ),
        ("PUT", f"/storage/uploads/{bad}", signed),
        ("GET", f"/storage/artifacts/{bad}", signed),
        ("GET", f"/api/voices/{UNKNOWN}", {"headers": {"X-API-Key": f"tada_{bad}"}}),
    ]


async def test_a_nul_in_any_id_is_a_4xx_before_the_database(
    engine: tuple[FastAPI, httpx.AsyncClient, str, str],
) -> None:
    app, api, key, _ = engine
    tried = held = 0
    failures: list[str] = []
    for raw in NUL_IDS:
        for method, path, options in id_routes(key, raw):
            resp = await api.request(method, path, **options)
            tried += 1
            assert_no_exception_text(resp)
            if 400 <= resp.status_code < 500:
                held += 1
            else:
                failures.append(f"{method} {path} {raw!r}: {resp.status_code} {resp.text[:120]}")
    print(f"NUL in ids: {tried} tried, {held} held")
    assert not failures, "\n".join(failures)
    assert await jobs_and_uploads(app) == (0, 0)


async def test_a_crashed_job_answers_500_without_the_exception_text(tmp_path: Path) -> None:
    """Whatever gets past the door and crashes a worker, the caller reads no internals."""
    secret = "KeyError: '/srv/tada/internal/path' at line 42"

    def crash(ctx: object) -> dict[str, object]:
        raise RuntimeError(secret)

    settings = make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=30, max_attempts=1),
    )
    from engine.voice.service import GENERATE_KIND

    async with running_engine(settings, handlers={GENERATE_KIND: crash}) as (app, _):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as api:
            key = await register(api)
            async with services_of(app).db.session.begin() as s:
                user_id = await s.scalar(select(User.id))
                voice = Voice(
                    user_id=user_id,
                    name="v",
                    backend="reference",
                    sample_seconds=5.0,
                    speech_seconds=5.0,
                    median_f0_hz=120.0,
                    profile={},
                )
                s.add(voice)
            resp = await api.post(
                f"/api/voices/{voice.id}/generations", json={"text": "hello"}, headers=h(key)
            )
    assert resp.status_code == 500, resp.text
    assert "KeyError" not in resp.text and "/srv/tada" not in resp.text, resp.text
    assert "RuntimeError" not in resp.text, resp.text
    assert resp.json()["detail"]


@pytest.mark.parametrize("text", ["hi \ud800", "\udfff there", "ok \ud83d"])
def test_texts_for_models_hold_no_lone_surrogate_whatever_way_they_came(text: str) -> None:
    """Behind the door too: the speech text and the prompts refuse a lone surrogate."""
    from pydantic import ValidationError

    from engine.errors import InvalidField
    from engine.image.schemas import GenerateLoraRequest
    from engine.voice.service import clean_text

    with pytest.raises(InvalidField):
        clean_text(text, 1000)
    for field in ("prompt", "negative_prompt"):
        with pytest.raises(ValidationError):
            GenerateLoraRequest.model_validate({"prompt": "a cat", field: text})
