"""Pre-signed upload URLs: validation, the signed PUT, size caps, listing and ownership.

These are the engine's own upload route and signed URLs (local storage); the same checks
on object storage are in test_storage.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from engine.settings import EngineSettings, UploadSettings
from tests.conftest import local_storage_only, make_settings, register, running_engine, services_of

pytestmark = local_storage_only


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def voice_url(api: httpx.AsyncClient, key: str, **params: str) -> dict:
    params = {"name": "My voice", "file_name": "sample.wav", **params}
    resp = await api.post("/api/voices/uploads/url", params=params, headers=h(key))
    assert resp.status_code == 200, resp.text
    return resp.json()


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_voice_upload_url_describes_the_put(api: httpx.AsyncClient, alice_key: str) -> None:
    body = await voice_url(api, alice_key, file_name="take 1.MP3")
    assert body["method"] == "PUT"
    assert body["headers"] == {"Content-Type": "audio/mpeg"}
    assert body["status"] == "pending"
    assert body["upload_id"] == body["id"]
    assert body["upload_url"].startswith("http://testserver/storage/uploads/" + body["id"])
    query = parse_qs(urlsplit(body["upload_url"]).query)
    assert set(query) == {"expires", "signature"}
    assert body["max_bytes"] == 50 * 1024 * 1024


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"file_name": "../etc/passwd.wav"}, "file_name"),
        ({"file_name": "dir/sample.wav"}, "file_name"),
        ({"file_name": "C:\\x\\sample.wav"}, "file_name"),
        ({"file_name": "sample.exe"}, "file_name"),
        ({"file_name": "sample"}, "file_name"),
        ({"file_name": "images.zip"}, "file_name"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 101}, "name"),
    ],
)
async def test_bad_voice_upload_requests_are_422(
    api: httpx.AsyncClient, alice_key: str, params: dict, field: str
) -> None:
    params = {"name": "v", "file_name": "a.wav", **params}
    resp = await api.post("/api/voices/uploads/url", params=params, headers=h(alice_key))
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"][-1] == field


@pytest.mark.parametrize(
    ("trigger", "ok"),
    [
        ("tadz", True),
        ("my_style-2 v", True),
        ("x" * 50, True),
        ("x" * 51, False),
        ("bad!word", False),
        ("", False),
        ("emoji😀", False),
    ],
)
async def test_lora_trigger_word_rules(
    api: httpx.AsyncClient, alice_key: str, trigger: str, ok: bool
) -> None:
    resp = await api.post(
        "/api/loras/uploads/url",
        params={"name": "set", "trigger_word": trigger, "file_name": "imgs.zip"},
        headers=h(alice_key),
    )
    assert (resp.status_code == 200) is ok, resp.text


async def test_lora_upload_needs_a_zip(api: httpx.AsyncClient, alice_key: str) -> None:
    resp = await api.post(
        "/api/loras/uploads/url",
        params={"name": "set", "trigger_word": "tw", "file_name": "imgs.tar"},
        headers=h(alice_key),
    )
    assert resp.status_code == 422
    assert ".zip" in resp.json()["detail"][0]["msg"]


async def test_put_then_list_with_upstream_field_names(
    api: httpx.AsyncClient, alice_key: str
) -> None:
    body = await voice_url(api, alice_key)
    put = await api.put(
        path_of(body["upload_url"]), content=b"RIFF" + b"\0" * 1000, headers=body["headers"]
    )
    assert put.status_code == 200, put.text
    assert put.json() == {"upload_id": body["id"], "status": "uploaded", "size_bytes": 1004}
    listed = (await api.get("/api/voices/uploads", headers=h(alice_key))).json()
    assert [u["id"] for u in listed] == [body["id"]]
    assert {"id", "name", "created_at", "status"} <= set(listed[0])
    assert listed[0]["status"] == "uploaded"

    lora = (
        await api.post(
            "/api/loras/uploads/url",
            headers=h(alice_key),
            params={"name": "set", "trigger_word": "tadz", "file_name": "set.zip"},
        )
    ).json()
    loras = (await api.get("/api/loras/uploads", headers=h(alice_key))).json()
    assert [u["id"] for u in loras] == [lora["id"]]
    assert {"id", "name", "created_at", "trigger_word"} <= set(loras[0])
    assert loras[0]["trigger_word"] == "tadz"
    # SQLite stores naive datetimes; the lists still state the zone.
    for item in (listed[0], loras[0]):
        assert datetime.fromisoformat(item["created_at"]).utcoffset() == timedelta(0), item


async def test_second_put_replaces_the_first(api: httpx.AsyncClient, alice_key: str) -> None:
    body = await voice_url(api, alice_key)
    url = path_of(body["upload_url"])
    assert (await api.put(url, content=b"a" * 10, headers=body["headers"])).status_code == 200
    second = await api.put(url, content=b"b" * 3, headers=body["headers"])
    assert second.json()["size_bytes"] == 3


async def test_tampered_expired_and_foreign_signatures_are_403(
    engine: tuple[FastAPI, httpx.AsyncClient], alice_key: str
) -> None:
    app, api = engine
    body = await voice_url(api, alice_key)
    other = await voice_url(api, alice_key)
    url = path_of(body["upload_url"])
    sig = parse_qs(urlsplit(url).query)["signature"][0]
    tampered = url.replace(sig, ("0" if sig[0] != "0" else "1") + sig[1:])
    assert (await api.put(tampered, content=b"x", headers=body["headers"])).status_code == 403
    # A valid signature for another upload does not open this one.
    other_query = urlsplit(other["upload_url"]).query
    swapped = f"/storage/uploads/{body['id']}?{other_query}"
    assert (await api.put(swapped, content=b"x", headers=body["headers"])).status_code == 403
    # Expired: signed correctly but in the past.
    signer = services_of(app).signer
    past = 1_000_000
    expired = f"/storage/uploads/{body['id']}?expires={past}&signature=" + signer.sign(
        "PUT", f"upload:{body['id']}", past
    )
    resp = await api.put(expired, content=b"x", headers=body["headers"])
    assert resp.status_code == 403
    assert "expired" in resp.json()["detail"]
    # Moving the expiry forward breaks the signature.
    later = url.replace("expires=", "expires=9")
    assert (await api.put(later, content=b"x", headers=body["headers"])).status_code == 403
    # A GET on an upload URL is not a PUT.
    assert (await api.get(url)).status_code == 405
    listed = (await api.get("/api/voices/uploads", headers=h(alice_key))).json()
    assert all(u["status"] == "pending" for u in listed)


async def test_wrong_content_type_is_415(api: httpx.AsyncClient, alice_key: str) -> None:
    body = await voice_url(api, alice_key)
    resp = await api.put(
        path_of(body["upload_url"]), content=b"x", headers={"Content-Type": "image/png"}
    )
    assert resp.status_code == 415
    assert "audio/wav" in resp.json()["detail"]
    resp = await api.put(path_of(body["upload_url"]), content=b"x")
    assert resp.status_code == 415


async def test_empty_body_is_400_and_nothing_kept(api: httpx.AsyncClient, alice_key: str) -> None:
    body = await voice_url(api, alice_key)
    resp = await api.put(path_of(body["upload_url"]), content=b"", headers=body["headers"])
    assert resp.status_code == 400


async def test_an_empty_put_leaves_the_stored_sample_in_place(
    engine: tuple[FastAPI, httpx.AsyncClient], alice_key: str
) -> None:
    app, api = engine
    body = await voice_url(api, alice_key)
    url = path_of(body["upload_url"])
    sample = b"RIFF" + b"\1" * 100
    assert (await api.put(url, content=sample, headers=body["headers"])).status_code == 200
    resp = await api.put(url, content=b"", headers=body["headers"])
    assert resp.status_code == 400 and "empty" in resp.json()["detail"]
    assert services_of(app).storage.upload_path(body["id"]).read_bytes() == sample
    listed = (await api.get("/api/voices/uploads", headers=h(alice_key))).json()
    assert listed[0]["status"] == "uploaded" and listed[0]["size_bytes"] == len(sample)


async def test_over_the_cap_is_413_and_nothing_is_kept(tmp_path) -> None:
    settings: EngineSettings = make_settings(
        tmp_path / "e", uploads=UploadSettings(max_audio_bytes=1000)
    )
    async with running_engine(settings) as (app, api):
        key = await register(api)
        body = await voice_url(api, key)
        url = path_of(body["upload_url"])

        async def chunks():
            for _ in range(5):
                yield b"z" * 300

        # Streamed without Content-Length: the cap is enforced while writing.
        resp = await api.put(url, content=chunks(), headers=body["headers"])
        assert resp.status_code == 413
        # Declared too large: refused before reading.
        resp = await api.put(url, content=b"z" * 1001, headers=body["headers"])
        assert resp.status_code == 413
        files = services_of(app).storage.root
        assert not any((files / "uploads").iterdir())
        assert not any((files / "tmp").iterdir())
        listed = (await api.get("/api/voices/uploads", headers=h(key))).json()
        assert listed[0]["status"] == "pending"
        ok = await api.put(url, content=b"z" * 1000, headers=body["headers"])
        assert ok.status_code == 200


async def test_uploads_are_private_to_their_owner(
    api: httpx.AsyncClient, alice_key: str, bob_key: str
) -> None:
    await voice_url(api, alice_key)
    assert (await api.get("/api/voices/uploads", headers=h(bob_key))).json() == []
    assert (await api.get("/api/loras/uploads", headers=h(bob_key))).json() == []


async def test_artifact_urls_are_signed_and_bound_to_their_key(
    engine: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, api = engine
    services = services_of(app)
    services.storage.write_artifact("test/one.txt", b"hello")
    services.storage.write_artifact("test/two.txt", b"secret")
    url = services.artifact_url("http://testserver/", "test/one.txt")
    resp = await api.get(path_of(url))
    assert resp.status_code == 200 and resp.content == b"hello"
    swapped = path_of(url).replace("one.txt", "two.txt")
    assert (await api.get(swapped)).status_code == 403
    assert (
        await api.get("/storage/artifacts/test/one.txt?expires=1&signature=x")
    ).status_code == 403
    assert (await api.put(path_of(url), content=b"x")).status_code == 405
