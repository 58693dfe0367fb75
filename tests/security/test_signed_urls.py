"""Signed URL abuse: tampered, expired, replayed after use, for another upload, wrong method.

Each is refused and writes nothing: the upload keeps its status and the storage folders
(uploads and the temporary folder streams go through) stay as they were.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from engine.services import EngineServices
from tests.conftest import make_settings, register, running_engine, services_of
from tests.engine.image.test_lora_api import h
from tests.engine.image.zips import good_zip

# Usable under the default limits (images of 256 px): the untouched URL must keep it.
ZIP = good_zip(4, size=256)


async def new_upload(api: httpx.AsyncClient, key: str) -> dict[str, object]:
    resp = await api.post(
        "/api/loras/uploads/url",
        params={"name": "set", "trigger_word": "tadz", "file_name": "set.zip"},
        headers=h(key),
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body


def parts(url: object) -> tuple[str, dict[str, str]]:
    split = urlsplit(str(url))
    return split.path, {k: v[0] for k, v in parse_qs(split.query).items()}


def stored(services: EngineServices) -> list[Path]:
    """Every file under the uploads and temporary folders."""
    root = services.storage.root
    return sorted(p for d in ("uploads", "tmp") for p in (root / d).rglob("*") if p.is_file())


async def status_of(api: httpx.AsyncClient, key: str, upload_id: str) -> str:
    uploads = (await api.get("/api/loras/uploads", headers=h(key))).json()
    return str(next(u["status"] for u in uploads if u["id"] == upload_id))


ZIP_HEADERS = {"Content-Type": "application/zip"}


def _flip(hex_text: str) -> str:
    return ("0" if hex_text[0] != "0" else "1") + hex_text[1:]


@pytest.mark.parametrize(
    "abuse",
    [
        "signature flipped",
        "signature truncated",
        "signature non-ascii",
        "signature missing",
        "expires extended",
        "expires not a number",
        "expired",
        "another upload",
        "not an upload id",
    ],
)
async def test_an_abused_put_url_is_refused_and_writes_nothing(
    engine: tuple[FastAPI, httpx.AsyncClient], alice_key: str, bob_key: str, abuse: str
) -> None:
    app, api = engine
    services = services_of(app)
    mine = await new_upload(api, alice_key)
    theirs = await new_upload(api, bob_key)
    path, query = parts(mine["upload_url"])
    before = stored(services)
    match abuse:
        case "signature flipped":
            query["signature"] = _flip(query["signature"])
        case "signature truncated":
            query["signature"] = query["signature"][:-1]
        case "signature non-ascii":
            query["signature"] = "é" * 64
        case "signature missing":
            del query["signature"]
        case "expires extended":
            query["expires"] = str(int(query["expires"]) + 3600)
        case "expires not a number":
            query["expires"] = "soon"
        case "expired":
            # Correctly signed by the engine's own key, but an hour in the past.
            past = int(time.time()) - 3600
            query = {
                "expires": str(past),
                "signature": services.signer.sign("PUT", f"upload:{mine['id']}", past),
            }
        case "another upload":
            path = f"/storage/uploads/{theirs['id']}"
        case "not an upload id":
            path = "/storage/uploads/..%2F..%2Fengine.sqlite3"
    resp = await api.put(f"{path}?{urlencode(query)}", content=ZIP, headers=ZIP_HEADERS)
    assert resp.status_code in (403, 404, 422), (abuse, resp.status_code, resp.text)
    if resp.status_code == 403:
        assert "refused" in resp.json()["detail"]
    assert stored(services) == before
    assert await status_of(api, alice_key, str(mine["id"])) == "pending"
    assert await status_of(api, bob_key, str(theirs["id"])) == "pending"


async def test_the_untouched_url_works_so_the_refusals_mean_something(
    engine: tuple[FastAPI, httpx.AsyncClient], alice_key: str
) -> None:
    app, api = engine
    mine = await new_upload(api, alice_key)
    path, query = parts(mine["upload_url"])
    resp = await api.put(f"{path}?{urlencode(query)}", content=ZIP, headers=ZIP_HEADERS)
    assert resp.status_code == 200, resp.text
    assert services_of(app).storage.upload_path(str(mine["id"])).read_bytes() == ZIP


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "PATCH"])
async def test_a_put_url_used_with_another_method_is_refused(
    engine: tuple[FastAPI, httpx.AsyncClient], alice_key: str, method: str
) -> None:
    app, api = engine
    mine = await new_upload(api, alice_key)
    path, query = parts(mine["upload_url"])
    before = stored(services_of(app))
    resp = await api.request(method, f"{path}?{urlencode(query)}", content=ZIP, headers=ZIP_HEADERS)
    assert resp.status_code == 405
    assert stored(services_of(app)) == before
    assert await status_of(api, alice_key, str(mine["id"])) == "pending"


async def test_a_url_replayed_after_its_upload_was_used_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "engine", image={"zip": {"min_side": 32}})
    async with running_engine(settings) as (app, api):
        await _replay_after_use(app, api, await register(api))


async def _replay_after_use(app: FastAPI, api: httpx.AsyncClient, alice_key: str) -> None:
    services = services_of(app)
    mine = await new_upload(api, alice_key)
    path, query = parts(mine["upload_url"])
    url = f"{path}?{urlencode(query)}"
    assert (await api.put(url, content=ZIP, headers=ZIP_HEADERS)).status_code == 200
    started = await api.post(f"/api/loras/trainings/{mine['id']}", headers=h(alice_key))
    assert started.status_code == 202, started.text  # the upload is now used

    replay = await api.put(url, content=b"PK\x05\x06" + b"\0" * 18, headers=ZIP_HEADERS)
    assert replay.status_code == 409
    assert services.storage.upload_path(str(mine["id"])).read_bytes() == ZIP
    assert not list((services.storage.root / "tmp").iterdir())


async def test_an_artifact_url_is_bound_to_its_key_method_and_time(
    engine: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, api = engine
    services = services_of(app)
    services.storage.write_artifact("images/a.png", b"first")
    services.storage.write_artifact("images/b.png", b"second")
    url = services.artifact_url("http://testserver", "images/a.png")
    path, query = parts(url)
    assert (await api.get(f"{path}?{urlencode(query)}")).content == b"first"

    other = f"/storage/artifacts/images/b.png?{urlencode(query)}"
    assert (await api.get(other)).status_code == 403
    assert (await api.put(f"{path}?{urlencode(query)}", content=b"x")).status_code == 405
    tampered = {**query, "signature": _flip(query["signature"])}
    assert (await api.get(f"{path}?{urlencode(tampered)}")).status_code == 403
    past = int(time.time()) - 1
    expired = {
        "expires": past,
        "signature": services.signer.sign("GET", "artifact:images/a.png", past),
    }
    assert (await api.get(f"{path}?{urlencode(expired)}")).status_code == 403
    # A PUT signature for the same name is not a GET signature.
    put_sig = services.signer.sign("PUT", "artifact:images/a.png", int(query["expires"]))
    as_put = {"expires": query["expires"], "signature": put_sig}
    assert (await api.get(f"{path}?{urlencode(as_put)}")).status_code == 403
    # Keys that try to climb out of the artifacts folder, even when correctly signed.
    for key in ("../engine-secret.key", "images/../../engine.sqlite3", "/etc/passwd"):
        exp = int(time.time()) + 60
        sig = services.signer.sign("GET", f"artifact:{key}", exp)
        resp = await api.get(f"/storage/artifacts/{key}?expires={exp}&signature={sig}")
        assert resp.status_code in (403, 404), (key, resp.status_code)
        assert b"secret" not in resp.content.lower() or resp.status_code != 200
