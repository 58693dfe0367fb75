"""Requests that try to wear the engine down or bend its answers (issue 12, items 4, 5, 7-9).

Bodies past their route's cap are refused before they are read (and before authentication),
stalled uploads are closed, signed URLs never follow the request's Host, lone surrogates
answer 4xx in every text field, rates and per-user resources are bounded, and one upload URL
keeps one body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select

from engine.app import create_app
from engine.jobs import TooManyPendingJobs
from engine.models import User
from engine.settings import JobSettings, LimitSettings
from tests.conftest import make_settings, register, running_engine, services_of
from tests.engine.image.zips import good_zip
from tests.engine.voice.conftest import h, upload_sample, wav_bytes
from tests.waiting import CEILING_S, polls

UNKNOWN = "00000000-0000-4000-8000-000000000000"


def engine_with(
    tmp_path: Path, **limits: object
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = make_settings(
        tmp_path / "engine",
        limits=LimitSettings.model_validate(limits),
        image={"zip": {"min_side": 32}},
    )
    return running_engine(settings)  # type: ignore[return-value]


class Counted:
    """A request body that counts how much of it the server pulled."""

    def __init__(self, total: int, chunk: int = 64 * 1024, stall_after: int | None = None) -> None:
        self.total, self.chunk, self.stall_after = total, chunk, stall_after
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < self.total:
            if self.stall_after is not None and self.sent >= self.stall_after:
                await asyncio.sleep(3600)
            self.sent += self.chunk
            yield b"x" * self.chunk


# ----------------------------------------------------------------- 4. bodies


async def test_a_json_body_past_the_cap_is_413_before_auth_and_unread(tmp_path: Path) -> None:
    async with engine_with(tmp_path, max_json_body_bytes=64 * 1024) as (_, api):
        body = Counted(300 * 1024 * 1024)
        resp = await api.post(
            f"/api/voices/{UNKNOWN}/generations",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert resp.status_code == 413, resp.text
        assert "detail" in resp.json()
        assert body.sent <= 256 * 1024  # stopped at the cap, not after 300 MB
        declared = await api.post(
            "/api/users/register?email=a@example.com",
            content=b"{}",
            headers={"Content-Length": str(10**9)},
        )
        assert declared.status_code == 413


async def test_a_stalled_upload_is_closed(tmp_path: Path) -> None:
    async with engine_with(tmp_path, body_stall_seconds=0.5) as (app, api):
        key = await register(api)
        resp = await api.post(
            "/api/voices/uploads/url", params={"name": "n", "file_name": "f.wav"}, headers=h(key)
        )
        target = urlsplit(resp.json()["upload_url"])
        body = Counted(1024 * 1024, stall_after=64 * 1024)
        put = await asyncio.wait_for(
            api.put(
                f"{target.path}?{target.query}",
                content=body,
                headers={"Content-Type": "audio/wav"},
            ),
            timeout=10,
        )
        assert put.status_code == 408, put.text
        root = services_of(app).storage.root
        assert not any((root / "tmp").iterdir())  # the partial body was removed


# ----------------------------------------------------------------- 5. URLs and logs


async def test_signed_urls_ignore_the_host_header(tmp_path: Path) -> None:
    async with engine_with(tmp_path) as (_, api):
        key = await register(api)
        for headers in (
            {"Host": "evil.example"},
            {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"},
            {"Forwarded": "host=evil.example;proto=https"},
        ):
            resp = await api.post(
                "/api/voices/uploads/url",
                params={"name": "n", "file_name": "f.wav"},
                headers={**h(key), **headers},
            )
            assert resp.status_code == 200
            assert "evil.example" not in resp.json()["upload_url"], headers


async def test_signed_urls_use_the_configured_public_url(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "engine", public_url="https://tada.example.org/")
    async with running_engine(settings) as (_, api):
        key = await register(api)
        resp = await api.post(
            "/api/voices/uploads/url",
            params={"name": "n", "file_name": "f.wav"},
            headers={**h(key), "Host": "evil.example"},
        )
        assert resp.json()["upload_url"].startswith("https://tada.example.org/storage/uploads/")


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_the_access_log_holds_no_signature_or_email(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path / "engine"))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="info", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in polls():  # uvicorn offers no event for "listening"
            if server.started:
                break
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        access = logging.getLogger("uvicorn.access")
        seen = Lines()
        access.addHandler(seen)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                reg = await client.post("/api/users/register?email=secret.person@example.com")
                key = reg.json()["api_key"]
                url = await client.post(
                    "/api/voices/uploads/url",
                    params={"name": "n", "file_name": "f.wav"},
                    headers=h(key),
                )
                signed = url.json()["upload_url"]
                await client.put(signed, content=b"RIFF")
        finally:
            access.removeHandler(seen)
    finally:
        server.should_exit = True
        await task
    lines = seen.lines
    assert len(lines) >= 3, lines
    text = "\n".join(lines)
    signature = signed.split("signature=", 1)[1]
    assert signature not in text and "secret.person" not in text, text
    assert "/storage/uploads/" in text  # the path itself stays useful


# ----------------------------------------------------------------- 7. lone surrogates


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (f"/api/voices/{UNKNOWN}/generations", "text"),
        (f"/api/voices/generations/{UNKNOWN}", "text"),
        (f"/api/loras/{UNKNOWN}/generations", "prompt"),
        ("/api/demo/tadz", "prompt"),
        ("/api/demo/pudgy", "prompt"),
    ],
)
async def test_lone_surrogates_answer_422_in_every_text_field(
    tmp_path: Path, path: str, field: str
) -> None:
    async with engine_with(tmp_path) as (_, api):
        key = await register(api)
        for raw in ("hello \\ud800 world", "\\udfff", "x" * 1001 + "\\ud800", "ok \\ud83d"):
            body = f'{{"{field}": "{raw}"}}'.encode()
            resp = await api.post(
                path, content=body, headers={**h(key), "Content-Type": "application/json"}
            )
            assert resp.status_code == 422, (path, raw, resp.status_code, resp.text[:200])
            assert resp.json()["detail"][0]["loc"] == ["body", field]
        # A surrogate inside a value of the wrong type: the 422 answer itself must not crash.
        wrong = f'{{"{field}": ["\\ud800"]}}'.encode()
        resp = await api.post(
            path, content=wrong, headers={**h(key), "Content-Type": "application/json"}
        )
        assert resp.status_code == 422
        # A correct pair (an emoji written as escapes) is fine.
        pair = f'{{"{field}": "hi \\ud83c\\udfa4"}}'.encode()
        resp = await api.post(
            path, content=pair, headers={**h(key), "Content-Type": "application/json"}
        )
        assert resp.status_code in (404, 503), resp.text


# ----------------------------------------------------------------- 8. abuse limits


async def test_registration_is_rate_limited_with_retry_after(tmp_path: Path) -> None:
    async with engine_with(tmp_path, register_per_client="3/minute") as (_, api):
        codes = [
            (await api.post(f"/api/users/register?email=u{i}@example.com")).status_code
            for i in range(3)
        ]
        assert codes == [200, 200, 200]
        resp = await api.post("/api/users/register?email=u9@example.com")
        assert resp.status_code == 429
        assert int(resp.headers["Retry-After"]) >= 1
        assert "detail" in resp.json()


async def test_registration_has_a_global_limit_across_clients(tmp_path: Path) -> None:
    async with engine_with(tmp_path, register_global="2/minute") as (app, _):
        codes = []
        for i in range(3):
            transport = httpx.ASGITransport(app=app, client=(f"10.0.0.{i}", 1234))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                codes.append(
                    (await c.post(f"/api/users/register?email=g{i}@example.com")).status_code
                )
        assert codes == [200, 200, 429]


async def test_every_api_route_has_a_per_client_limit(tmp_path: Path) -> None:
    async with engine_with(tmp_path, requests_per_client="5/minute") as (_, api):
        codes = [(await api.get("/api/voices")).status_code for _ in range(6)]
        assert codes[:5] == [401] * 5 and codes[5] == 429


@pytest.mark.parametrize(
    ("email", "status"),
    [
        ("ａｌｉｃｅ@example.com", 409),  # fullwidth letters: the same address
        ("ALICE@EXAMPLE.COM", 409),
        ("alice@ｅｘａｍｐｌｅ.com", 409),
        ("a" * 64 + "@example.com", 200),
        ("a" * 65 + "@example.com", 422),
    ],
)
async def test_emails_are_nfkc_normalised_and_length_checked(
    tmp_path: Path, email: str, status: int
) -> None:
    async with engine_with(tmp_path) as (_, api):
        await register(api, "alice@example.com")
        resp = await api.post("/api/users/register", params={"email": email})
        assert resp.status_code == status, resp.text


async def test_pending_upload_urls_per_user_are_bounded(tmp_path: Path) -> None:
    async with engine_with(tmp_path, max_pending_uploads=3) as (_, api):
        key = await register(api)
        codes = [
            (
                await api.post(
                    "/api/voices/uploads/url",
                    params={"name": "n", "file_name": "f.wav"},
                    headers=h(key),
                )
            ).status_code
            for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        other = await register(api, "bob@example.com")
        resp = await api.post(
            "/api/voices/uploads/url", params={"name": "n", "file_name": "f.wav"}, headers=h(other)
        )
        assert resp.status_code == 200  # one member's uploads do not block another's


async def test_stored_bytes_per_user_are_bounded(tmp_path: Path) -> None:
    data = good_zip(4, size=64)
    async with engine_with(tmp_path, max_stored_bytes_per_user=len(data) + 10) as (_, api):
        key = await register(api)
        for expected in (200, 413):
            resp = await api.post(
                "/api/loras/uploads/url",
                params={"name": "n", "file_name": "f.zip", "trigger_word": "tadz"},
                headers=h(key),
            )
            target = urlsplit(resp.json()["upload_url"])
            put = await api.put(
                f"{target.path}?{target.query}",
                content=data,
                headers={"Content-Type": "application/zip"},
            )
            assert put.status_code == expected, put.text


async def test_a_refused_sample_is_deleted(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "engine", jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S)
    )
    silence = wav_bytes(np.zeros(22050 * 5, dtype=np.float32), 22050)
    async with running_engine(settings) as (app, api):
        key = await register(api)
        upload_id = await upload_sample(api, key, silence)
        resp = await api.post(
            "/api/voices/uploads", params={"upload_id": upload_id}, headers=h(key)
        )
        assert resp.status_code == 400
        assert not services_of(app).storage.upload_path(upload_id).exists()


async def test_pending_jobs_per_user_are_bounded(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "engine", limits=LimitSettings(max_pending_jobs=2))
    async with running_engine(settings) as (app, api):
        await register(api)
        async with services_of(app).db.session() as s:
            uid = await s.scalar(select(User.id))
        jobs = services_of(app).jobs
        await jobs.submit("voice.generate", {}, uid)
        await jobs.submit("voice.generate", {}, uid)
        with pytest.raises(TooManyPendingJobs):
            await jobs.submit("voice.generate", {}, uid)
        await jobs.submit("voice.generate", {}, None)  # the engine's own jobs are not capped


async def test_a_member_past_the_pending_jobs_limit_gets_429(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "engine",
        limits=LimitSettings(max_pending_jobs=0),
        image={"zip": {"min_side": 32}},
    )
    async with running_engine(settings) as (_, api):
        key = await register(api)
        resp = await api.post(
            "/api/loras/uploads/url",
            params={"name": "n", "file_name": "f.zip", "trigger_word": "tadz"},
            headers=h(key),
        )
        body = resp.json()
        target = urlsplit(body["upload_url"])
        put = await api.put(
            f"{target.path}?{target.query}",
            content=good_zip(4, size=64),
            headers={"Content-Type": "application/zip"},
        )
        assert put.status_code == 200
        train = await api.post(f"/api/loras/trainings/{body['upload_id']}", headers=h(key))
        assert train.status_code == 429, train.text
        assert "Retry-After" in train.headers


async def test_speech_text_is_bounded(tmp_path: Path) -> None:
    async with engine_with(tmp_path, max_speech_chars=100) as (_, api):
        key = await register(api)
        resp = await api.post(
            f"/api/voices/{UNKNOWN}/generations", json={"text": "a" * 101}, headers=h(key)
        )
        assert resp.status_code == 422
        assert "100" in json.dumps(resp.json()["detail"])


# ----------------------------------------------------------------- 9. upload races


async def test_one_upload_url_keeps_one_body(tmp_path: Path) -> None:
    async with engine_with(tmp_path) as (app, api):
        key = await register(api)
        resp = await api.post(
            "/api/loras/uploads/url",
            params={"name": "n", "file_name": "f.zip", "trigger_word": "tadz"},
            headers=h(key),
        )
        target = urlsplit(resp.json()["upload_url"])
        url = f"{target.path}?{target.query}"
        slow = Counted(256 * 1024, stall_after=128 * 1024)
        first = asyncio.create_task(
            api.put(url, content=slow, headers={"Content-Type": "application/zip"})
        )
        await asyncio.sleep(0.3)
        second = await api.put(
            url, content=good_zip(4, size=64), headers={"Content-Type": "application/zip"}
        )
        assert second.status_code == 409, second.text  # the first is still being received
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        uploads = (await api.get("/api/loras/uploads", headers=h(key))).json()
        assert uploads[0]["status"] == "pending"
        del app


async def test_a_put_after_the_upload_was_used_is_409(tmp_path: Path) -> None:
    async with engine_with(tmp_path) as (_, api):
        key = await register(api)
        resp = await api.post(
            "/api/loras/uploads/url",
            params={"name": "n", "file_name": "f.zip", "trigger_word": "tadz"},
            headers=h(key),
        )
        body = resp.json()
        target = urlsplit(body["upload_url"])
        url = f"{target.path}?{target.query}"
        data = good_zip(4, size=64)
        put = await api.put(url, content=data, headers={"Content-Type": "application/zip"})
        assert put.status_code == 200
        train = await api.post(f"/api/loras/trainings/{body['upload_id']}", headers=h(key))
        assert train.status_code == 202, train.text
        again = await api.put(url, content=data, headers={"Content-Type": "application/zip"})
        assert again.status_code == 409


def test_serve_believes_forwarded_headers_only_from_configured_proxies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from engine import cli

    seen: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.append(kw))
    cli._serve(make_settings(tmp_path / "a"), None, None)
    cli._serve(make_settings(tmp_path / "b", trusted_proxies=["10.1.2.3"]), None, None)
    assert seen[0]["proxy_headers"] is False
    assert seen[1]["proxy_headers"] is True and seen[1]["forwarded_allow_ips"] == "10.1.2.3"


@pytest.mark.parametrize(
    ("mode", "headers", "status"),
    [
        ("open", {}, 200),
        ("closed", {}, 403),
        ("token", {}, 403),
        ("token", {"X-Registration-Token": "wrong-token-wrong-token"}, 403),
        ("token", {"X-Registration-Token": "s3cret-registration-token"}, 200),
    ],
)
async def test_registration_can_be_closed_or_need_a_token(
    tmp_path: Path, mode: str, headers: dict[str, str], status: int
) -> None:
    from engine.settings import RegistrationSettings

    registration = RegistrationSettings.model_validate(
        {"mode": mode, "token": "s3cret-registration-token" if mode == "token" else None}
    )
    settings = make_settings(tmp_path / "engine", registration=registration)
    async with running_engine(settings) as (_, api):
        resp = await api.post(
            "/api/users/register", params={"email": "x@example.com"}, headers=headers
        )
        assert resp.status_code == status, resp.text


def test_token_mode_without_a_token_is_refused_at_start(tmp_path: Path) -> None:
    from engine.settings import SettingsError, load_engine_settings

    config = tmp_path / "c.toml"
    config.write_text('[engine.registration]\nmode = "token"\n')
    with pytest.raises(SettingsError, match="TADA_ENGINE_REGISTRATION_TOKEN"):
        load_engine_settings(config, environ={})
    ok = load_engine_settings(
        config, environ={"TADA_ENGINE_REGISTRATION_TOKEN": "a-long-enough-token"}
    )
    assert ok.registration.mode == "token"
