"""The audio decoders read one self-contained recording of an accepted container, nothing else.

Reproduced first: an ffconcat script PUT as ``x.mp3`` naming another member's upload
cloned their recording, and a DASH manifest under an m4a name read a local file outside
the data directory. Around them, the family: playlists, other demuxers (SDP, ffmetadata),
images (image2), formats we do not take (AIFF), mov/mp4 with external data references.
The engine answers each with a 400 and a reason; the bot's check refuses each with a
short message to the member, and both still take every accepted container.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from bot.media import MediaRejected, check_audio
from engine.settings import JobSettings
from engine.voice.container import AudioContainer, ContainerRefused, detect, sniff
from tests.conftest import make_settings, register, running_engine
from tests.engine.voice.conftest import (
    Speaker,
    base_sample,
    h,
    reference_backend,
    upload_sample,
)
from tests.security import audio_hostile as hostile
from tests.waiting import CEILING_S

__all__ = ["base_sample", "reference_backend"]  # fixtures


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = make_settings(
        tmp_path / "engine", jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S)
    )
    async with running_engine(settings) as pair:
        yield pair


async def clone(api: httpx.AsyncClient, key: str, data: bytes, file_name: str) -> httpx.Response:
    upload_id = await upload_sample(api, key, data, file_name=file_name)
    return await api.post("/api/voices/uploads", params={"upload_id": upload_id}, headers=h(key))


async def assert_refused(api: httpx.AsyncClient, key: str, data: bytes, file_name: str) -> str:
    resp = await clone(api, key, data, file_name)
    assert resp.status_code == 400, (file_name, resp.status_code, resp.text[:300])
    assert (await api.get("/api/voices", headers=h(key))).json() == []
    detail: str = resp.json()["detail"]
    return detail


async def test_an_ffconcat_script_cannot_clone_another_members_upload(
    engine: tuple[FastAPI, httpx.AsyncClient], base_sample: Speaker
) -> None:
    _, api = engine
    alice = await register(api, "alice@example.com")
    bob = await register(api, "bob@example.com")
    alices_upload = await upload_sample(api, alice, base_sample.wav())
    detail = await assert_refused(api, bob, hostile.ffconcat(alices_upload), "x.mp3")
    assert "not a wav, mp3, ogg, flac, m4a or webm recording" in detail
    # Alice's own upload is untouched and still clones.
    resp = await api.post(
        "/api/voices/uploads", params={"upload_id": alices_upload}, headers=h(alice)
    )
    assert resp.status_code == 200, resp.text


async def test_a_dash_manifest_cannot_read_local_files(
    engine: tuple[FastAPI, httpx.AsyncClient], base_sample: Speaker, tmp_path: Path
) -> None:
    _, api = engine
    key = await register(api)
    secret = tmp_path / "outside" / "secret.m4a"
    secret.parent.mkdir()
    secret.write_bytes(
        hostile.transcode(base_sample.wav(), "mp4", tmp_path, "-movflags", "+faststart")
    )
    detail = await assert_refused(api, key, hostile.dash(secret.as_uri()), "x.m4a")
    assert "not a wav, mp3" in detail


def hostile_family(tmp: Path, wav: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, file name): each must be refused by both decoders."""
    secret = tmp / "secret.mp3"
    secret.write_bytes(hostile.transcode(wav, "mp3", tmp))
    m4a = hostile.transcode(wav, "mp4", tmp)
    return {
        "ffconcat absolute": (hostile.ffconcat(str(secret)), "x.wav"),
        "ffconcat behind ID3": (b"ID3\x04\0\0\0\0\0\0" + hostile.ffconcat("secret.mp3"), "x.mp3"),
        "hls playlist": (hostile.hls(secret.as_uri()), "x.mp3"),
        "hls under m4a": (hostile.hls(secret.as_uri()), "x.m4a"),
        "dash under ogg": (hostile.dash(secret.as_uri()), "x.ogg"),
        "sdp (network)": (hostile.sdp(), "x.ogg"),
        "ffmetadata": (b";FFMETADATA1\ntitle=x\n", "x.flac"),
        "image2 png": (hostile.png(), "x.mp3"),
        "image2 jpeg": (hostile.jpeg(), "x.m4a"),
        "aiff": (hostile.transcode(wav, "aiff", tmp), "x.wav"),
        "au": (hostile.transcode(wav, "au", tmp), "x.wav"),
        "adts aac": (hostile.transcode(wav, "adts", tmp), "x.m4a"),
        "mov external dref": (hostile.external_dref(m4a, secret.as_uri()), "x.m4a"),
        "mov relative dref": (hostile.external_dref(m4a, "secret.mp3"), "x.m4a"),
    }


REASONS = {
    "mov external dref": "other files",
    "mov relative dref": "other files",
    "ffconcat behind ID3": "decode",
}


async def test_playlists_other_demuxers_images_and_references_are_refused(
    engine: tuple[FastAPI, httpx.AsyncClient], base_sample: Speaker, tmp_path: Path
) -> None:
    _, api = engine
    key = await register(api)
    for name, (data, file_name) in hostile_family(tmp_path, base_sample.wav()).items():
        detail = await assert_refused(api, key, data, file_name)
        assert REASONS.get(name, "not a wav, mp3") in detail, (name, detail)


@pytest.mark.parametrize(
    ("fmt", "args", "container"),
    [
        ("wav", (), AudioContainer.WAV),
        ("mp3", (), AudioContainer.MP3),
        ("mp3", ("-id3v2_version", "0", "-write_xing", "0"), AudioContainer.MP3),
        ("ogg", ("-c:a", "libvorbis"), AudioContainer.OGG),
        ("ogg", ("-c:a", "libopus"), AudioContainer.OGG),
        ("flac", (), AudioContainer.FLAC),
        ("mp4", (), AudioContainer.MP4),
        ("ipod", ("-movflags", "+faststart"), AudioContainer.MP4),
        ("webm", ("-c:a", "libopus"), AudioContainer.MATROSKA),
        ("matroska", (), AudioContainer.MATROSKA),
    ],
)
def test_every_accepted_container_is_detected_and_decodes(
    base_sample: Speaker, tmp_path: Path, fmt: str, args: tuple[str, ...], container: str
) -> None:
    data = hostile.transcode(base_sample.wav(), fmt, tmp_path, *args)
    assert sniff(data[:4096]) is container
    with (tmp_path / f"out.{fmt}").open("rb") as fh:
        assert detect(fh) is container
    ext = {"ipod": "m4a", "mp4": "m4a", "matroska": "webm"}.get(fmt, fmt)
    info = check_audio(data, f"me.{ext}")
    assert info.duration_seconds == pytest.approx(
        len(base_sample.audio) / base_sample.sample_rate, abs=0.3
    )


def test_the_reference_check_sees_an_external_dref(base_sample: Speaker, tmp_path: Path) -> None:
    m4a = hostile.transcode(base_sample.wav(), "mp4", tmp_path)
    bad = hostile.external_dref(m4a, "file:///etc/passwd")
    path = tmp_path / "bad.m4a"
    path.write_bytes(bad)
    with path.open("rb") as fh, pytest.raises(ContainerRefused, match="other files"):
        detect(fh)


async def test_the_bots_check_refuses_the_same_family(base_sample: Speaker, tmp_path: Path) -> None:
    family = hostile_family(tmp_path, base_sample.wav())
    family["ffconcat relative"] = (hostile.ffconcat("secret.mp3"), "x.mp3")
    family["dash"] = (hostile.dash((tmp_path / "secret.mp3").as_uri()), "x.m4a")
    for name, (data, file_name) in family.items():
        with pytest.raises(MediaRejected) as caught:
            check_audio(data, file_name)
        message = str(caught.value)
        assert len(message) < 200 and "ffmpeg" not in message, (name, message)
        assert "WAV, MP3, OGG, M4A, FLAC or WebM" in message or "other files" in message, (
            name,
            message,
        )
