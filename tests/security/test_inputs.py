"""Hostile and odd input is answered cleanly: a 4xx that says why, nothing kept, no 5xx.

Zip slip, zip bombs and links in training zips; files past the size cap, empty files,
audio that does not decode; texts, prompts, names and trigger words at and past their
limits; unicode edge cases (right-to-left overrides, zero-width characters, emoji, NUL);
CR/LF header injection through file names.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from engine.settings import JobSettings, UploadSettings
from tests.conftest import make_settings, register, running_engine, services_of
from tests.engine.image.test_lora_api import h
from tests.engine.image.zips import build_zip, good_zip, image_bytes
from tests.engine.voice.conftest import upload_sample
from tests.waiting import CEILING_S

CAP = 64 * 1024
RTL = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "gnp.exe" shows as "exe.png"
ZWSP = "\u200b"  # ZERO WIDTH SPACE
EMOJI = "🎤🦄👩🏽‍🚀"


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, str]]:
    """An engine with 64 KiB upload caps and a voice worker, and Alice's key."""
    settings = make_settings(
        tmp_path / "engine",
        uploads=UploadSettings(max_audio_bytes=CAP, max_zip_bytes=CAP),
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image={"zip": {"min_side": 32}},
    )
    async with running_engine(settings) as (app, api):
        yield app, api, await register(api)


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def kept_uploads(app: FastAPI) -> list[Path]:
    root = services_of(app).storage.root
    return [p for d in ("uploads", "tmp") for p in (root / d).iterdir()]


async def upload_url(api: httpx.AsyncClient, key: str, kind: str = "loras") -> dict[str, str]:
    params = {"name": "n", "file_name": "f.zip" if kind == "loras" else "f.wav"}
    if kind == "loras":
        params["trigger_word"] = "tadz"
    resp = await api.post(f"/api/{kind}/uploads/url", params=params, headers=h(key))
    assert resp.status_code == 200, resp.text
    body: dict[str, str] = resp.json()
    return body


def target(body: dict[str, str]) -> str:
    parts = urlsplit(body["upload_url"])
    return f"{parts.path}?{parts.query}"


# -- training zips ---------------------------------------------------------------------

IMAGES = {f"set/img{i}.png": image_bytes(i) for i in range(4)}


def bomb() -> bytes:
    """A small zip whose one entry inflates to 50 MiB of zeros."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("set/bomb.png", "w", force_zip64=True) as fh:
            block = b"\0" * (1024 * 1024)
            for _ in range(50):
                fh.write(block)
        for name, data in IMAGES.items():
            zf.writestr(name, data)
    return buf.getvalue()


HOSTILE_ZIPS = {
    "zip slip (..)": (build_zip({**IMAGES, "../../../escaped.png": image_bytes(9)}), ".."),
    "zip slip (absolute)": (build_zip({**IMAGES, "/tmp/escaped.png": image_bytes(9)}), "/tmp"),
    "zip slip (windows)": (build_zip({**IMAGES, "..\\..\\escaped.png": image_bytes(9)}), ".."),
    "zip slip (drive)": (build_zip({**IMAGES, "C:/escaped.png": image_bytes(9)}), "C:"),
    "symbolic link": (
        build_zip({**IMAGES, "set/link.png": b"/etc/passwd"}, links=("set/link.png",)),
        "link",
    ),
    "zip bomb": (bomb(), "bomb"),
    "not a zip": (b"this is not a zip at all" * 10, "zip"),
    "truncated zip": (build_zip(IMAGES)[:-30], "zip"),
}


@pytest.mark.parametrize("case", list(HOSTILE_ZIPS))
async def test_hostile_zips_are_refused_with_the_reason_and_nothing_escapes(
    small: tuple[FastAPI, httpx.AsyncClient, str], case: str
) -> None:
    app, api, key = small
    data, hint = HOSTILE_ZIPS[case]
    assert len(data) <= CAP, len(data)  # the cap is not what refuses it
    root = services_of(app).storage.root
    parent_before = files_under(root.parent.parent)
    body = await upload_url(api, key)
    resp = await api.put(target(body), content=data, headers=body["headers"])
    assert resp.status_code == 400, (case, resp.status_code, resp.text)
    detail = resp.json()["detail"]
    assert detail.startswith("the zip cannot be used"), detail
    assert hint.lower() in detail.lower() or case in ("not a zip", "truncated zip"), detail
    # Nothing was extracted anywhere, and the zip itself was not kept either.
    assert files_under(root.parent.parent) - parent_before == set()
    assert not (root.parent.parent / "escaped.png").exists()
    resp = await api.post(f"/api/loras/trainings/{body['id']}", headers=h(key))
    assert resp.status_code == 400 and "PUT the zip" in resp.json()["detail"]
    trainings = (await api.get("/api/loras/trainings", headers=h(key))).json()
    assert trainings["total"] == 0


def zip_of_size(size: int) -> bytes:
    """A usable training zip of exactly ``size`` bytes (padded with its archive comment)."""

    def build(comment: bytes) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in IMAGES.items():
                zf.writestr(name, data)
            zf.comment = comment
        return buf.getvalue()

    data = build(b"x" * (size - len(build(b""))))
    assert len(data) == size, (len(data), size)
    return data


# -- sizes -----------------------------------------------------------------------------


async def test_a_file_past_the_cap_is_413_and_nothing_is_kept(
    small: tuple[FastAPI, httpx.AsyncClient, str],
) -> None:
    app, api, key = small
    body = await upload_url(api, key)
    resp = await api.put(target(body), content=b"x" * (CAP + 1), headers=body["headers"])
    assert resp.status_code == 413 and "limit" in resp.json()["detail"]

    async def stream() -> AsyncIterator[bytes]:  # no Content-Length: caught while streaming
        for _ in range(10):
            yield os.urandom(CAP // 4)

    resp = await api.put(target(body), content=stream(), headers=body["headers"])
    assert resp.status_code == 413
    assert kept_uploads(app) == []
    # Exactly at the cap is accepted.
    resp = await api.put(target(body), content=zip_of_size(CAP), headers=body["headers"])
    assert resp.status_code == 200 and resp.json()["size_bytes"] == CAP


async def test_an_empty_file_is_400_and_nothing_is_kept(
    small: tuple[FastAPI, httpx.AsyncClient, str],
) -> None:
    app, api, key = small
    for kind in ("loras", "voices"):
        body = await upload_url(api, key, kind)
        resp = await api.put(target(body), content=b"", headers=body["headers"])
        assert resp.status_code == 400 and "empty" in resp.json()["detail"]
    assert kept_uploads(app) == []


async def test_a_wrong_content_type_is_415(small: tuple[FastAPI, httpx.AsyncClient, str]) -> None:
    app, api, key = small
    body = await upload_url(api, key)
    for sent in ("text/html", "application/zip\r\nX-Injected: 1", ""):
        resp = await api.put(target(body), content=b"PK", headers={"Content-Type": sent})
        assert resp.status_code == 415, sent
    assert kept_uploads(app) == []


@pytest.mark.parametrize(
    ("file_name", "data"),
    [
        ("noise.wav", os.urandom(4000)),
        ("fake.mp3", b"ID3" + os.urandom(3000)),
        ("text.ogg", b"this is plain text, not audio " * 50),
        ("header-only.wav", b"RIFF\x24\x00\x00\x00WAVEfmt "),
    ],
)
async def test_undecodable_audio_is_refused_with_a_reason(
    small: tuple[FastAPI, httpx.AsyncClient, str], file_name: str, data: bytes
) -> None:
    _, api, key = small
    upload_id = await upload_sample(api, key, data, file_name=file_name)
    resp = await api.post("/api/voices/uploads", params={"upload_id": upload_id}, headers=h(key))
    assert resp.status_code == 400, resp.text
    assert "decode" in resp.json()["detail"] or "audio" in resp.json()["detail"]
    uploads = (await api.get("/api/voices/uploads", headers=h(key))).json()
    assert [u["status"] for u in uploads if u["id"] == upload_id] == ["failed"]
    assert (await api.get("/api/voices", headers=h(key))).json() == []


# -- lengths and unicode ---------------------------------------------------------------

UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("a" * 1000, 404),  # at the limit: accepted, then the unknown voice is 404
        ("a" * 1001, 422),
        ("  " + "a" * 1000 + "  ", 404),  # trimmed first
        ("", 422),
        (ZWSP * 10, 422),  # nothing to say
        (EMOJI, 422),
        (f"{RTL}hello{ZWSP} world", 404),
        ("hello\x00world", 422),  # the synthesiser takes C strings
        ("line one\nline two\tend", 404),
        (f"مرحبا {EMOJI}", 404),
    ],
)
async def test_voice_text_limits_and_unicode(
    api: httpx.AsyncClient, alice_key: str, text: str, status: int
) -> None:
    for path in (f"/api/voices/{UNKNOWN}/generations", f"/api/voices/generations/{UNKNOWN}"):
        resp = await api.post(path, json={"text": text}, headers=h(alice_key))
        assert resp.status_code == status, (path, resp.text[:200])
        if status == 422:
            assert resp.json()["detail"][0]["loc"] == ["body", "text"]


@pytest.mark.parametrize(
    ("prompt", "status"),
    [
        ("p" * 1000, 404),
        ("p" * 1001, 422),
        ("", 422),
        (f"{RTL}a cat{ZWSP} {EMOJI}", 404),
        # PostgreSQL text cannot hold a NUL (upstream's store is PostgreSQL too).
        (f"{RTL}a cat{ZWSP}\x00 {EMOJI}", 422),
    ],
)
async def test_prompt_limits_and_unicode(
    api: httpx.AsyncClient, alice_key: str, prompt: str, status: int
) -> None:
    for path in (f"/api/loras/{UNKNOWN}/generations", f"/api/loras/generations/{UNKNOWN}"):
        resp = await api.post(path, json={"prompt": prompt}, headers=h(alice_key))
        assert resp.status_code == status, (path, resp.text[:200])


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("n" * 100, 200),
        ("n" * 101, 422),
        ("   ", 422),
        ("a\x00b", 422),
        ("line\r\nX-Injected: 1", 422),
        (f"{RTL}gnp.exe", 200),
        (f"{EMOJI} {ZWSP}set", 200),
        ("שלום עולם", 200),
    ],
)
async def test_upload_names_at_the_limits_and_unicode_round_trip(
    api: httpx.AsyncClient, alice_key: str, name: str, status: int
) -> None:
    resp = await api.post(
        "/api/loras/uploads/url",
        params={"name": name, "trigger_word": "tadz", "file_name": "set.zip"},
        headers=h(alice_key),
    )
    assert resp.status_code == status, resp.text
    if status == 200:
        listed = (await api.get("/api/loras/uploads", headers=h(alice_key))).json()
        assert listed[0]["name"] == name.strip()


@pytest.mark.parametrize(
    ("word", "status"),
    [("t" * 50, 200), ("t" * 51, 422), (EMOJI, 422), ("a\x00", 422), (f"ta{ZWSP}dz", 422)],
)
async def test_trigger_words(
    api: httpx.AsyncClient, alice_key: str, word: str, status: int
) -> None:
    resp = await api.post(
        "/api/loras/uploads/url",
        params={"name": "n", "trigger_word": word, "file_name": "set.zip"},
        headers=h(alice_key),
    )
    assert resp.status_code == status, resp.text


@pytest.mark.parametrize(
    "file_name",
    [
        "x\r\nSet-Cookie: a=b.zip",
        "x\nLocation: http://evil.example/.zip",
        "x\x00.zip",
        "../../etc/passwd.zip",
        "..\\..\\boot.zip",
        "C:\\set.zip",
        "a" * 252 + ".zip",
        "set.zip.exe",
        f"{RTL}piz.exe",
    ],
)
async def test_file_names_cannot_inject_headers_or_paths(
    api: httpx.AsyncClient, alice_key: str, file_name: str
) -> None:
    resp = await api.post(
        "/api/loras/uploads/url",
        params={"name": "n", "trigger_word": "tadz", "file_name": file_name},
        headers=h(alice_key),
    )
    assert resp.status_code == 422, (file_name, resp.text)
    assert resp.json()["detail"][0]["loc"] == ["query", "file_name"]
    assert "set-cookie" not in resp.headers and "location" not in resp.headers


async def test_an_accepted_odd_file_name_never_reaches_a_header(
    api: httpx.AsyncClient, alice_key: str
) -> None:
    odd = 'we"ird; filename=evil.html; .zip'
    resp = await api.post(
        "/api/loras/uploads/url",
        params={"name": "n", "trigger_word": "tadz", "file_name": odd},
        headers=h(alice_key),
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["file_name"] == odd
    assert body["headers"] == {"Content-Type": "application/zip"}
    assert all(odd not in v for v in resp.headers.values())
    put = await api.put(target(body), content=good_zip(4, size=256), headers=body["headers"])
    assert put.status_code == 200, put.text
    assert all("evil" not in v for v in put.headers.values())


@pytest.mark.parametrize(
    ("email", "status"),
    [
        ("a\x00b@example.com", 422),
        ("x\r\n@example.com", 422),
        (f"{ZWSP}@example.com", 422),
        ("a" * 310 + "@example.com", 422),
        ("用户@例子.广告", 200),
    ],
)
async def test_registration_emails(api: httpx.AsyncClient, email: str, status: int) -> None:
    resp = await api.post("/api/users/register", params={"email": email})
    assert resp.status_code == status, resp.text
