"""The storage interface on both back ends: the data directory and a real S3 bucket.

The S3 back end runs against SeaweedFS's S3 gateway (``tests/servers.py``), started once
for the session. Uploads go through the store's own pre-signed PUT URLs with httpx, as a
client would send them; the engine only signs, HEADs and checks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread
import httpx
import pytest

from engine.settings import EngineSettings, JobSettings, StorageSettings, UploadSettings
from engine.storage import NotStored, Storage, TooLarge
from engine.storage.local import LocalStorage
from engine.storage.s3 import S3Storage
from tests.conftest import get_from, make_settings, put_to, register, running_engine, services_of
from tests.engine.image.zips import build_zip, good_zip
from tests.servers import SeaweedFSServer
from tests.waiting import CEILING_S


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.fixture
def prefix() -> str:
    return f"s{uuid.uuid4().hex[:12]}/"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> Iterator[Storage]:
    """Each back end of :class:`Storage`, empty."""
    if request.param == "local":
        yield LocalStorage(tmp_path / "files")
        return
    server: SeaweedFSServer = request.getfixturevalue("seaweedfs")
    settings = StorageSettings.model_validate(server.storage_settings(prefix))
    yield S3Storage(settings, scratch=tmp_path / "tmp", cache=tmp_path / "cache")


def put_upload_bytes(store: Storage, upload_id: str, data: bytes, content_type: str) -> None:
    """Bytes for an upload, as a finished PUT leaves them in each back end."""
    if isinstance(store, LocalStorage):
        store.upload_path(upload_id).write_bytes(data)
    else:
        assert isinstance(store, S3Storage)
        store.client.put_object(
            Bucket=store.bucket,
            Key=store.upload_key(upload_id),
            Body=data,
            ContentType=content_type,
        )


def s3_engine_settings(
    server: SeaweedFSServer, tmp_path: Path, prefix: str, **overrides: object
) -> EngineSettings:
    return make_settings(
        tmp_path / "engine",
        storage=server.storage_settings(prefix),
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        **overrides,
    )


# ------------------------------------------------------------------ the interface


def test_artifacts_are_written_read_and_replaced(store: Storage) -> None:
    store.write_artifact("voices/v1/g1.mp3", b"first")
    with store.local_artifact("voices/v1/g1.mp3") as path:
        assert path.read_bytes() == b"first"
    store.write_artifact("voices/v1/g1.mp3", b"second, longer")
    with store.local_artifact("voices/v1/g1.mp3") as path:  # a cached copy is refreshed
        assert path.read_bytes() == b"second, longer"
    with store.artifact_file("loras/t1.safetensors") as dest:
        dest.write_bytes(b"lora")
    with store.local_artifact("loras/t1.safetensors") as path:
        assert path.read_bytes() == b"lora"
    with pytest.raises(NotStored), store.local_artifact("loras/none.safetensors"):
        pass
    with pytest.raises(ValueError):
        store.write_artifact("../escape", b"x")


def test_a_folder_of_artifacts_is_deleted_and_nothing_beside_it(store: Storage) -> None:
    for key in ("voice-states/c1/m1.safetensors", "voice-states/c1/m2.safetensors"):
        store.write_artifact(key, b"state")
    with store.local_artifact("voice-states/c1/m1.safetensors"):
        pass  # a worker's cached copy (S3) goes too
    store.write_artifact("voice-states/c10/m1.safetensors", b"another clip's")
    store.write_artifact("voice-states/c1.safetensors", b"beside the folder")
    store.delete_artifacts("voice-states/c1")
    for key in ("voice-states/c1/m1.safetensors", "voice-states/c1/m2.safetensors"):
        with pytest.raises(NotStored), store.local_artifact(key):
            pass
    for key in ("voice-states/c10/m1.safetensors", "voice-states/c1.safetensors"):
        with store.local_artifact(key) as path:
            assert path.read_bytes() != b"state"
    if isinstance(store, S3Storage):
        assert not (store.cache / "voice-states" / "c1").exists()
    store.delete_artifacts("voice-states/none")  # nothing there: no error
    with pytest.raises(ValueError):
        store.delete_artifacts("../escape")


def test_a_failed_artifact_write_stores_nothing(store: Storage) -> None:
    with pytest.raises(RuntimeError), store.artifact_file("loras/t2.safetensors") as dest:
        dest.write_bytes(b"half")
        raise RuntimeError("training failed")
    if isinstance(store, S3Storage):
        with pytest.raises(NotStored), store.local_artifact("loras/t2.safetensors"):
            pass


async def test_uploads_are_stated_copied_capped_and_deleted(store: Storage) -> None:
    upload_id = str(uuid.uuid4())
    assert await store.stat_upload(upload_id) is None
    with pytest.raises(NotStored), store.local_upload(upload_id, 100):
        pass
    put_upload_bytes(store, upload_id, b"RIFF....WAVE", "audio/wav")
    found = await store.stat_upload(upload_id)
    assert found is not None and found.size == 12
    if isinstance(store, S3Storage):
        assert found.content_type == "audio/wav"
    with store.local_upload(upload_id, 100) as path:
        assert path.read_bytes() == b"RIFF....WAVE"
    if isinstance(store, S3Storage):  # the temporary copy is gone with the block
        assert not path.exists() and not list(store.scratch.iterdir())
    with pytest.raises(TooLarge), store.local_upload(upload_id, 11):
        pass
    store.delete_upload(upload_id)
    store.delete_upload(upload_id)  # twice: no error
    assert await store.stat_upload(upload_id) is None


# ------------------------------------------------------------------ S3 signatures


def test_what_seaweedfs_enforces_in_a_presigned_put(seaweedfs: SeaweedFSServer) -> None:
    """Measured, not assumed: which changes to a signed PUT the store refuses."""
    client = seaweedfs.client()

    def url(key: str, **params: object) -> str:
        signed: str = client.generate_presigned_url(
            "put_object",
            Params={"Bucket": seaweedfs.bucket, "Key": key, **params},
            ExpiresIn=60,
        )
        return signed

    def put(target: str, data: bytes, content_type: str | None) -> int:
        headers = {"Content-Type": content_type} if content_type else {}
        return httpx.put(target, content=data, headers=headers).status_code

    typed = url("probe/typed", ContentType="audio/wav")
    assert put(typed, b"x" * 10, "audio/wav") == 200
    assert put(typed, b"x" * 10, "application/zip") == 403  # another type: refused
    assert put(typed, b"x" * 10, None) == 403  # no type: refused
    assert put(typed, b"x" * 5000, "audio/wav") == 200  # any length: accepted
    sized = url("probe/sized", ContentType="audio/wav", ContentLength=10)
    assert put(sized, b"x" * 11, "audio/wav") == 403  # a signed length is exact
    assert put(sized, b"x" * 10, "audio/wav") == 200
    other_key = typed.replace("probe/typed", "probe/other")
    assert put(other_key, b"x", "audio/wav") == 403
    for key in ("probe/typed", "probe/sized"):
        client.delete_object(Bucket=seaweedfs.bucket, Key=key)


async def test_a_presigned_artifact_get_works_and_expires(
    seaweedfs: SeaweedFSServer, tmp_path: Path, prefix: str
) -> None:
    settings = StorageSettings.model_validate(seaweedfs.storage_settings(prefix))
    store = S3Storage(settings, scratch=tmp_path / "tmp", cache=tmp_path / "cache")
    store.write_artifact("images/a.png", b"png bytes")
    # One link that lives long enough for a loaded machine to use it, one that expires at
    # once: the same signing, so each half holds whatever the load (a 1 s link used at once
    # was refused as expired on a machine at load 13).
    url = store.presigned_get("images/a.png", 600)
    short = store.presigned_get("images/a.png", 1)
    assert url is not None and url.startswith(seaweedfs.endpoint_url)
    assert short is not None and short.startswith(seaweedfs.endpoint_url)
    async with httpx.AsyncClient() as client:
        got = await client.get(url)
        assert got.status_code == 200 and got.content == b"png bytes"
        await asyncio.sleep(2.1)
        late = await client.get(short)
    assert late.status_code == 403 and b"expired" in late.content


# ------------------------------------------------------------------ the engine on S3


async def test_an_upload_url_is_the_stores_own_and_the_engine_takes_no_bytes(
    seaweedfs: SeaweedFSServer, tmp_path: Path, prefix: str
) -> None:
    async with running_engine(s3_engine_settings(seaweedfs, tmp_path, prefix)) as (app, api):
        key = await register(api)
        resp = await api.post(
            "/api/voices/uploads/url",
            params={"name": "me", "file_name": "me.wav"},
            headers=h(key),
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert {"id", "upload_id", "upload_url", "url", "method", "headers", "expires_at"} <= set(
            body
        )
        assert body["method"] == "PUT" and body["headers"] == {"Content-Type": "audio/wav"}
        assert body["upload_url"] == body["url"]
        assert body["upload_url"].startswith(f"{seaweedfs.endpoint_url}/{seaweedfs.bucket}/")
        assert "X-Amz-Signature=" in body["upload_url"]
        # The engine's own upload route does not take bytes when the store does.
        engine_put = await api.put(
            f"/storage/uploads/{body['id']}?expires=1&signature=x", content=b"x"
        )
        assert engine_put.status_code in (403, 404)
        wrong = await put_to(api, body["upload_url"], b"RIFF", {"Content-Type": "audio/mpeg"})
        assert wrong.status_code == 403  # the type is bound into the signature
        assert seaweedfs.keys(prefix) == []
        # An artifact URL the engine signed (before a switch to S3) moves to the store's.
        services = services_of(app)
        await anyio.to_thread.run_sync(services.storage.write_artifact, "images/old.png", b"old")
        expires, sig = services.signer.issue("GET", "artifact:images/old.png", 60)
        moved = await api.get(
            "/storage/artifacts/images/old.png", params={"expires": expires, "signature": sig}
        )
        assert moved.status_code == 307, moved.text
        assert moved.headers["location"].startswith(seaweedfs.endpoint_url)
        assert (await get_from(api, moved.headers["location"])).content == b"old"


async def test_a_too_large_or_mistyped_upload_is_refused_at_use_and_deleted(
    seaweedfs: SeaweedFSServer, tmp_path: Path, prefix: str
) -> None:
    settings = s3_engine_settings(
        seaweedfs, tmp_path, prefix, uploads=UploadSettings(max_audio_bytes=1000)
    )
    async with running_engine(settings) as (app, api):
        key = await register(api)

        async def new_url() -> dict:
            resp = await api.post(
                "/api/voices/uploads/url",
                params={"name": "me", "file_name": "me.wav"},
                headers=h(key),
            )
            assert resp.status_code == 200, resp.text
            body: dict = resp.json()
            return body

        # Nothing PUT yet: a 400 that says so, and the URL stays usable.
        pending = await new_url()
        early = await api.post(
            "/api/voices/uploads", params={"upload_id": pending["id"]}, headers=h(key)
        )
        assert early.status_code == 400
        assert early.json()["detail"] == "not uploaded: PUT the sample to its upload URL first"

        # The store takes any length under a signed type; the engine refuses it at use.
        big = await new_url()
        put = await put_to(api, big["upload_url"], b"\0" * 5000, big["headers"])
        assert put.status_code == 200
        used = await api.post(
            "/api/voices/uploads", params={"upload_id": big["id"]}, headers=h(key)
        )
        assert used.status_code == 413, used.text
        assert used.json()["detail"].startswith("file is larger than the")
        # A store that did not enforce the signed type: stored as text, refused at use.
        typed = await new_url()
        store = services_of(app).storage
        assert isinstance(store, S3Storage)
        await anyio.to_thread.run_sync(
            lambda: store.client.put_object(
                Bucket=store.bucket,
                Key=store.upload_key(typed["id"]),
                Body=b"RIFF....",
                ContentType="text/plain",
            )
        )
        mistyped = await api.post(
            "/api/voices/uploads", params={"upload_id": typed["id"]}, headers=h(key)
        )
        assert mistyped.status_code == 415, mistyped.text
        assert "Content-Type: audio/wav" in mistyped.json()["detail"]
        assert seaweedfs.keys(prefix) == []  # nothing kept
        listed = {u["id"]: u for u in (await api.get("/api/voices/uploads", headers=h(key))).json()}
        assert listed[big["id"]]["status"] == "pending"
        assert listed[big["id"]]["error"].startswith("file is larger than the")


async def test_a_lora_on_s3_bad_zip_refused_then_trained_and_drawn(
    seaweedfs: SeaweedFSServer, tmp_path: Path, prefix: str
) -> None:
    from tests.engine.image.test_lora_api import IMAGE, wait_final

    settings = s3_engine_settings(seaweedfs, tmp_path, prefix, image=IMAGE)
    async with running_engine(settings) as (app, api):
        key = await register(api)
        resp = await api.post(
            "/api/loras/uploads/url",
            params={"name": "set", "trigger_word": "tadz", "file_name": "set.zip"},
            headers=h(key),
        )
        target = resp.json()
        upload_id = target["id"]
        bad = build_zip({"notes.txt": b"no images here"})
        assert (await put_to(api, target["upload_url"], bad, target["headers"])).status_code == 200
        refused = await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        assert refused.status_code == 400, refused.text
        assert "image" in refused.json()["detail"]
        assert seaweedfs.keys(prefix) == []  # the refused zip is not kept
        # A fixed zip PUT to the same URL is taken.
        good = good_zip(4)
        assert (await put_to(api, target["upload_url"], good, target["headers"])).status_code == 200
        started = await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        assert started.status_code == 202, started.text
        final = await wait_final(api, key, upload_id)
        assert final["status"] == "succeeded", final
        lora_id = final["id"]
        assert f"{prefix}artifacts/loras/{lora_id}.safetensors" in seaweedfs.keys(prefix)
        made = await api.post(
            f"/api/loras/{lora_id}/generations", json={"prompt": "a cat"}, headers=h(key)
        )
        assert made.status_code == 200, made.text
        url = made.json()["url"]
        assert url.startswith(seaweedfs.endpoint_url)  # a pre-signed GET of the store
        image = await get_from(api, url)
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
        assert not list((services_of(app).settings.data_dir / "files" / "tmp").iterdir())


async def test_a_voice_on_s3_is_cloned_and_speaks(
    seaweedfs: SeaweedFSServer, tmp_path: Path, prefix: str
) -> None:
    from tests.conftest import REFERENCE_VOICE, backend_for
    from tests.engine.voice.conftest import GENERATION_TEXT, SAMPLE_TEXT, wav_bytes

    speech = await anyio.to_thread.run_sync(
        lambda: backend_for(REFERENCE_VOICE).base_speech(SAMPLE_TEXT)
    )
    sample = wav_bytes(speech.audio, speech.sample_rate)
    async with running_engine(s3_engine_settings(seaweedfs, tmp_path, prefix)) as (app, api):
        key = await register(api)
        resp = await api.post(
            "/api/voices/uploads/url", params={"name": "me", "file_name": "me.wav"}, headers=h(key)
        )
        target = resp.json()
        put = await put_to(api, target["upload_url"], sample, target["headers"])
        assert put.status_code == 200
        started = time.monotonic()
        cloned = await api.post(
            "/api/voices/uploads", params={"upload_id": target["id"]}, headers=h(key)
        )
        assert cloned.status_code == 200, cloned.text
        voice_id = cloned.json()["id"]
        spoken = await api.post(
            f"/api/voices/{voice_id}/generations", json={"text": GENERATION_TEXT}, headers=h(key)
        )
        assert spoken.status_code == 200, spoken.text
        audio_url = spoken.json()["url"]
        assert audio_url.startswith(seaweedfs.endpoint_url)
        audio = await get_from(api, audio_url)
        assert audio.status_code == 200 and len(audio.content) > 1000
        assert time.monotonic() - started < 120
        uploads = (await api.get("/api/voices/uploads", headers=h(key))).json()
        assert uploads[0]["status"] == "processed" and uploads[0]["size_bytes"] == len(sample)
        del app


# ------------------------------------------------------------------ settings


def test_the_s3_secret_comes_from_the_environment_and_reaches_a_child(tmp_path: Path) -> None:
    from engine.settings import (
        S3_SECRET_ENV,
        SettingsError,
        load_engine_settings,
        settings_for_child,
        settings_from_parent,
    )

    config = tmp_path / "config.toml"
    config.write_text(
        '[engine.storage]\nbackend = "s3"\nbucket = "tada"\naccess_key_id = "tada"\n'
        'endpoint_url = "http://127.0.0.1:9"\n'
    )
    settings = load_engine_settings(config, {S3_SECRET_ENV: "s3cr3t"})
    assert settings.storage.secret_access_key is not None
    assert settings.storage.secret_access_key.get_secret_value() == "s3cr3t"
    child = settings_from_parent({"TADA_ENGINE_SETTINGS_JSON": settings_for_child(settings)})
    assert child is not None and child.storage.secret_access_key is not None
    assert child.storage.secret_access_key.get_secret_value() == "s3cr3t"
    with pytest.raises(SettingsError, match="go together"):
        load_engine_settings(config, {})
    config.write_text(
        '[engine.storage]\nbackend = "s3"\nbucket = "tada"\nsecret_access_key = "x"\n'
    )
    with pytest.raises(SettingsError, match=S3_SECRET_ENV):
        load_engine_settings(config, {})
    config.write_text('[engine.storage]\nbackend = "s3"\n')
    with pytest.raises(SettingsError, match=r"needs storage\.bucket"):
        load_engine_settings(config, {})
    config.write_text(
        '[engine.storage]\nbackend = "s3"\nbucket = "b"\n'
        "[engine.uploads]\nartifact_url_ttl_seconds = 1000000\n"
    )
    with pytest.raises(SettingsError, match="at most 7 days"):
        load_engine_settings(config, {})
