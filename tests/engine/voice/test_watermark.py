"""The imperceptible watermark (Resemble AI's PerTh net, its real packaged weights): every
speech the engine makes carries it, through the codecs Discord and members use; speech
not made here does not; ``POST /api/trace/speech`` reports it beside the fingerprint."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from numpy.typing import NDArray

from bench import voice_quality as vq
from engine.settings import JobSettings
from engine.voice.audio import decode, encode, ffmpeg_exe
from engine.voice.reference import CpuReferenceBackend
from engine.voice.settings import AudioFormat, VoiceSettings
from engine.voice.watermark import (
    GUESS_THRESHOLD,
    MARK_THRESHOLD,
    Detection,
    Watermarker,
    torchaudio_stand_in,
)
from tests.conftest import TEST_VOICE, make_settings, register, running_engine, shared_watermarker
from tests.engine.voice.conftest import GENERATION_TEXT, Speaker, clone, fetch, h, wav_bytes
from tests.prerequisites import SPHINX_LIBRIVOX
from tests.waiting import CEILING_S

pytestmark = pytest.mark.slow(60)

OPERATOR = "operator-token-for-tests-0123456789"
RATE = 22050


@pytest.fixture(scope="module")
def watermarker() -> Watermarker:
    return shared_watermarker()


def _opus(audio: NDArray[np.float32], rate: int, tmp: Path, kbps: int = 32) -> NDArray[np.float32]:
    """``audio`` through Opus at ``kbps`` (a Discord voice message), decoded confined."""
    src, dst = tmp / "in.wav", tmp / f"out-{kbps}.ogg"
    src.write_bytes(wav_bytes(audio, rate))
    codec = ["-c:a", "libopus", "-b:a", f"{kbps}k"]
    subprocess.run(
        [ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), *codec, str(dst)],
        check=True,
        capture_output=True,
    )
    return decode(dst, rate)


def _mp3(audio: NDArray[np.float32], rate: int, tmp: Path, kbps: int = 128) -> NDArray[np.float32]:
    """``audio`` as the engine encodes MP3, decoded confined."""
    path = tmp / f"out-{kbps}.mp3"
    path.write_bytes(encode(audio, rate, AudioFormat.MP3, kbps))
    return decode(path, rate)


@pytest.mark.no_database
def test_perth_loads_with_a_stand_in_that_leaves_no_trace(watermarker: Watermarker) -> None:
    watermarker.load()
    # Other libraries (transformers) probe for torchaudio: it must stay absent.
    assert "torchaudio" not in sys.modules and "torchaudio.transforms" not in sys.modules
    assert importlib.util.find_spec("torchaudio") is None
    # The stand-in builds the buffers torchaudio built when the net was trained (the
    # packaged checkpoint holds them), and its STFT pair reconstructs a signal.
    from perth.perth_net.perth_net_implicit.audio_processor import AudioProcessor

    net = watermarker.net
    fresh = AudioProcessor(net.hp).state_dict()
    assert set(fresh) == {"spectrogram.window", "inv_spectrogram.window", "stretch.phase_advance"}
    for name, value in fresh.items():
        assert torch.allclose(value, net.ap.state_dict()[name], atol=1e-6), name
    signal = torch.from_numpy(np.random.default_rng(1).normal(0, 0.1, 32000).astype(np.float32))
    spec = net.ap.spectrogram(signal)
    assert spec.is_complex() and spec.shape == (1025, 32000 // 320 + 1)
    back = net.ap.inv_spectrogram(spec)
    assert torch.allclose(back, signal[: len(back)], atol=1e-4)
    with pytest.raises(RuntimeError, match="stand-in"):
        net.ap.stretch(spec, 1.1)
    with torchaudio_stand_in():
        assert "torchaudio.transforms" in sys.modules
    assert "torchaudio" not in sys.modules


@pytest.mark.no_database
def test_speech_made_here_keeps_its_mark_through_mp3_and_opus(
    watermarker: Watermarker, reference_backend: CpuReferenceBackend, tmp_path: Path
) -> None:
    speech = reference_backend.base_speech(GENERATION_TEXT)
    audio, rate = speech.audio, speech.sample_rate
    marked = watermarker.apply(audio, rate)
    assert marked.dtype == np.float32 and marked.shape == audio.shape
    # Imperceptible is the net's claim; here: a residual well under the speech.
    snr = 10 * np.log10(np.sum(audio**2) / np.sum((marked - audio) ** 2))
    assert snr > 10, snr
    assert watermarker.detect(audio, rate) < MARK_THRESHOLD
    assert watermarker.detect(marked, rate) > MARK_THRESHOLD
    for name, copy, plain in (
        ("mp3 128k", _mp3(marked, rate, tmp_path), _mp3(audio, rate, tmp_path)),
        ("opus 32k", _opus(marked, rate, tmp_path), _opus(audio, rate, tmp_path)),
    ):
        assert watermarker.detect(copy, rate) > MARK_THRESHOLD, name
        assert watermarker.detect(plain, rate) < MARK_THRESHOLD, name
    # A stream's pieces are marked one by one: a short one carries it too.
    piece = audio[: int(0.8 * rate)]
    assert watermarker.detect(watermarker.apply(piece, rate), rate) > MARK_THRESHOLD


@pytest.mark.no_database
def test_a_sped_up_copy_is_found_by_reading_it_at_other_rates(
    watermarker: Watermarker, reference_backend: CpuReferenceBackend, tmp_path: Path
) -> None:
    speech = reference_backend.base_speech("Ships far out at sea counted on him every night.")
    rate = speech.sample_rate
    src, dst = tmp_path / "marked.wav", tmp_path / "fast.mp3"
    src.write_bytes(wav_bytes(watermarker.apply(speech.audio, rate), rate))
    # 8 % faster, pitch and tempo together (ffmpeg's asetrate), then MP3.
    speed_up = ["-af", f"asetrate={round(rate * 1.08)},aresample={rate}"]
    subprocess.run(
        [ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), *speed_up, str(dst)],
        check=True,
        capture_output=True,
    )
    fast = decode(dst, RATE)
    assert watermarker.detect(fast, RATE) < MARK_THRESHOLD  # the mark holds +-1.5 % only
    found = watermarker.find(fast, RATE)
    assert found.marked and found.speed == pytest.approx(1.08, abs=0.03), found
    plain = watermarker.find(speech.audio, rate)
    assert not plain.marked, plain


@pytest.mark.no_database
def test_human_speech_carries_no_mark(watermarker: Watermarker, tmp_path: Path) -> None:
    try:
        humans = vq.human_speakers()
    except vq.MaterialMissing as exc:
        pytest.skip(f"voice evaluation data not installed: {exc}")
    for speaker in humans:
        audio = vq._resample(speaker.clone, speaker.sample_rate, RATE)[: 6 * RATE]
        assert watermarker.detect(audio, RATE) < MARK_THRESHOLD, speaker.name
        # Nor read at any of the trace's other rates.
        assert not watermarker.find(_opus(audio, RATE, tmp_path), RATE).marked, speaker.name


@pytest.mark.no_database
def test_the_setting_defaults_to_on() -> None:
    assert VoiceSettings().watermark is True
    assert VoiceSettings(watermark=False).watermark is False


@pytest.fixture
async def marked_app(tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    settings = make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        trace={"operator_token": OPERATOR},
        voice={**TEST_VOICE, "watermark": request.param},
    )
    async with running_engine(settings) as pair:
        yield pair


async def _speak(api: httpx.AsyncClient, key: str, voice_id: str) -> bytes:
    made = await api.post(
        f"/api/voices/{voice_id}/generations", json={"text": GENERATION_TEXT}, headers=h(key)
    )
    assert made.status_code == 200, made.text
    return (await fetch(api, made.json()["audio_url"])).content


def _score(watermarker: Watermarker, data: bytes, tmp: Path, name: str) -> float:
    path = tmp / name
    path.write_bytes(data)
    return watermarker.detect(decode(path, RATE), RATE)


@pytest.mark.parametrize("marked_app", [True], indirect=True)
async def test_every_speech_is_marked_and_the_trace_says_so(
    marked_app: tuple[FastAPI, httpx.AsyncClient],
    speakers: dict[str, Speaker],
    watermarker: Watermarker,
    tmp_path: Path,
) -> None:
    _, api = marked_app
    alice = await register(api, "alice@example.com")
    bob = await register(api, "bob@example.com")
    voice = (await clone(api, alice, speakers["low"].wav())).json()
    mp3 = await _speak(api, alice, voice["id"])
    assert _score(watermarker, mp3, tmp_path, "made.mp3") > MARK_THRESHOLD
    # The streamed path marks each piece as it is made.
    streamed = await api.post(
        f"/api/voices/{voice['id']}/speech/stream",
        json={"text": "Hello there. This is a stream."},
        headers=h(alice),
    )
    assert streamed.status_code == 200, streamed.text
    assert _score(watermarker, streamed.content, tmp_path, "stream.wav") > MARK_THRESHOLD

    # Bob's generations do not hold it, but it is still known to be machine-made here.
    opus = _opus(decode(_file(tmp_path, "made.mp3", mp3), RATE), RATE, tmp_path)
    clip = wav_bytes(opus, RATE)
    answer = await api.post("/api/trace/speech", content=clip, headers=h(bob))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["made_here"] is False and body["matches"] == []
    assert body["watermarked"] is True and body["watermark_score"] > MARK_THRESHOLD

    human = sorted(SPHINX_LIBRIVOX.glob("*.wav"))[0].read_bytes()
    answer = await api.post(
        "/api/trace/speech", content=human, headers={"X-Operator-Token": OPERATOR}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["watermarked"] is False
    assert answer.json()["watermark_score"] < MARK_THRESHOLD


def _file(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("marked_app", [False], indirect=True)
async def test_with_the_setting_off_speech_is_not_marked(
    marked_app: tuple[FastAPI, httpx.AsyncClient],
    speakers: dict[str, Speaker],
    watermarker: Watermarker,
    tmp_path: Path,
) -> None:
    _, api = marked_app
    alice = await register(api, "alice@example.com")
    voice = (await clone(api, alice, speakers["low"].wav())).json()
    mp3 = await _speak(api, alice, voice["id"])
    assert _score(watermarker, mp3, tmp_path, "made.mp3") < MARK_THRESHOLD
    answer = await api.post("/api/trace/speech", content=mp3, headers=h(alice))
    assert answer.status_code == 200, answer.text
    # Found by its fingerprint; the watermark was not looked for.
    assert answer.json()["made_here"] is True
    assert answer.json()["watermarked"] is None and answer.json()["watermark_score"] is None


def test_a_clip_found_only_at_another_speed_must_score_more() -> None:
    """The speed guesses are many chances for a clip not made here to read high."""
    assert Detection(0.55, 1.0).marked
    assert not Detection(0.55, 1.08).marked
    assert Detection(GUESS_THRESHOLD + 0.01, 1.08).marked
    assert GUESS_THRESHOLD > MARK_THRESHOLD
