"""The client against our engine, in-process: every endpoint the engine serves so far."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from bot.tada import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    TadaClient,
    Unauthorized,
    UnsupportedMediaType,
)
from engine.settings import UploadSettings
from tests.conftest import make_settings, running_engine
from tests.engine.image.zips import good_zip

BASE = "http://testserver"


@pytest.fixture
def tada(api: httpx.AsyncClient) -> TadaClient:
    return TadaClient(api, base_url=BASE)


def usable_zip() -> bytes:
    """A zip the engine accepts under its default limits (4 images of 256 px)."""
    return good_zip(4, size=256)


def broken_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    return buf.getvalue()


async def test_register_then_the_key_authenticates(tada: TadaClient) -> None:
    registration = await tada.register("  Alice@Example.com ")
    assert registration.email == "alice@example.com"
    key = registration.api_key
    assert key.get_secret_value().startswith("tada_")
    assert "tada_" not in repr(registration)
    await tada.with_key(key).verify_key()


async def test_register_errors(tada: TadaClient) -> None:
    await tada.register("bob@example.com")
    with pytest.raises(Conflict) as taken:
        await tada.register("BOB@example.com")
    assert "already registered" in taken.value.message
    with pytest.raises(InvalidRequest) as invalid:
        await tada.register("not an email")
    assert invalid.value.errors[0]["loc"] == ["query", "email"]


async def test_a_wrong_key_is_unauthorized(tada: TadaClient) -> None:
    with pytest.raises(Unauthorized) as caught:
        await tada.with_key(SecretStr("tada_nope")).verify_key()
    assert caught.value.detail == "invalid API key"


async def test_voice_sample_upload_url_put_and_list(tada: TadaClient, tmp_path: Path) -> None:
    me = tada.with_key((await tada.register("alice@example.com")).api_key)
    target = await me.create_voice_upload_url("My voice", "take 1.wav")
    assert target.headers == {"Content-Type": "audio/wav"}
    assert target.max_bytes == 50 * 1024 * 1024
    sample = tmp_path / "take.wav"
    sample.write_bytes(b"RIFF" + b"\x01" * 200_000)
    receipt = await me.put_upload(target, sample)
    assert receipt.upload_id == target.upload_id
    assert receipt.size_bytes == 200_004 and receipt.status == "uploaded"
    uploads = await me.list_voice_uploads()
    assert [(u.id, u.name, u.status, u.size_bytes) for u in uploads] == [
        (target.upload_id, "My voice", "uploaded", 200_004)
    ]


async def test_lora_zip_upload_url_put_and_list(tada: TadaClient) -> None:
    me = tada.with_key((await tada.register("alice@example.com")).api_key)
    target = await me.create_lora_upload_url("My style", "tadz", "images.zip")
    data = usable_zip()
    receipt = await me.put_upload(target, data)
    assert receipt.size_bytes == len(data)
    (upload,) = await me.list_lora_uploads()
    assert (upload.id, upload.trigger_word, upload.status) == (target.upload_id, "tadz", "uploaded")


async def test_uploads_belong_to_their_key(tada: TadaClient) -> None:
    alice = tada.with_key((await tada.register("alice@example.com")).api_key)
    bob = tada.with_key((await tada.register("bob@example.com")).api_key)
    await alice.put_upload(await alice.create_lora_upload_url("a", "tw", "a.zip"), usable_zip())
    assert await bob.list_lora_uploads() == []


async def test_upload_refusals_map_to_their_errors(tada: TadaClient) -> None:
    me = tada.with_key((await tada.register("alice@example.com")).api_key)
    with pytest.raises(InvalidRequest) as bad_name:
        await me.create_voice_upload_url("v", "../../etc/passwd.wav")
    assert bad_name.value.errors[0]["loc"][-1] == "file_name"
    target = await me.create_voice_upload_url("v", "a.wav")
    tampered = target.model_copy(
        update={"upload_url": target.upload_url.replace("signature=", "signature=0")}
    )
    with pytest.raises(Forbidden):
        await me.put_upload(tampered, b"RIFF")
    wrong_type = target.model_copy(update={"headers": {"Content-Type": "image/png"}})
    with pytest.raises(UnsupportedMediaType):
        await me.put_upload(wrong_type, b"RIFF")
    images = await me.create_lora_upload_url("set", "tadz", "set.zip")
    with pytest.raises(BadRequest) as unusable:
        await me.put_upload(images, broken_zip())
    assert "'a.png': it does not decode" in unusable.value.message


async def test_an_upload_over_the_cap_is_payload_too_large(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "engine", uploads=UploadSettings(max_audio_bytes=1000))
    async with running_engine(settings) as (_app, api):
        tada = TadaClient(api, base_url=BASE)
        me = tada.with_key((await tada.register("alice@example.com")).api_key)
        target = await me.create_voice_upload_url("v", "a.wav")
        with pytest.raises(PayloadTooLarge):
            await me.put_upload(target, b"RIFF" + b"\0" * 5000)
