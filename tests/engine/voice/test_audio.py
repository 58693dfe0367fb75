"""Decoding, judging and normalising samples; encoding speech."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.voice.audio import (
    SampleRejected,
    decode,
    encode,
    ffmpeg_exe,
    load_sample,
    rms_dbfs,
    speech_dbfs,
)
from engine.voice.settings import AudioFormat
from tests.engine.voice.conftest import Speaker, transcode, wav_bytes

pytestmark = pytest.mark.no_database

RATE = 22050


def load(path: Path) -> object:
    return load_sample(
        path, sample_rate=RATE, min_seconds=3.0, max_seconds=300.0, target_dbfs=-20.0
    )


@pytest.mark.parametrize("ext", ["wav", "mp3", "m4a", "ogg", "flac", "webm"])
def test_every_accepted_format_decodes_to_the_same_speech(
    base_sample: Speaker, tmp_path: Path, ext: str
) -> None:
    data = base_sample.wav()
    if ext != "wav":
        data = transcode(data, ext, tmp_path)
    path = tmp_path / f"sample.{ext}"
    path.write_bytes(data)
    sample = load_sample(
        path, sample_rate=RATE, min_seconds=3.0, max_seconds=300.0, target_dbfs=-20.0
    )
    # Lossy codecs pad a little; the length is the speech's, within 0.1 s.
    assert abs(sample.original_seconds - len(base_sample.audio) / RATE) < 0.1
    assert sample.speech_seconds > 3.0
    # Normalised: mono float at the engine's rate, about -20 dBFS, peaks under full scale.
    assert sample.sample_rate == RATE
    assert abs(speech_dbfs(sample.audio, RATE) - -20.0) < 1.5
    assert float(np.max(np.abs(sample.audio))) < 0.95


def test_a_stereo_44k_file_becomes_mono_at_the_engine_rate(
    base_sample: Speaker, tmp_path: Path
) -> None:
    src = tmp_path / "mono.wav"
    src.write_bytes(base_sample.wav())
    stereo = tmp_path / "stereo.flac"
    cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), "-ac", "2", "-ar", "44100"]
    subprocess.run([*cmd, str(stereo)], check=True)
    audio = decode(stereo, RATE)
    assert abs(len(audio) / RATE - len(base_sample.audio) / RATE) < 0.05


def _write(tmp_path: Path, audio: np.ndarray, name: str = "s.wav") -> Path:
    path = tmp_path / name
    path.write_bytes(wav_bytes(audio.astype(np.float32), RATE))
    return path


def test_garbage_is_refused_as_undecodable(tmp_path: Path) -> None:
    path = tmp_path / "sample.mp3"
    path.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(SampleRejected, match="not audio we can decode"):
        load(path)


def test_too_short_is_refused(base_sample: Speaker, tmp_path: Path) -> None:
    path = _write(tmp_path, base_sample.audio[: int(2.0 * RATE)])
    with pytest.raises(SampleRejected, match=r"2\.0 s long; record at least 3 s"):
        load(path)


def test_too_long_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = _write(tmp_path, rng.normal(0, 0.05, int(301 * RATE)))
    with pytest.raises(SampleRejected, match="longer than 5 min; keep it under 5 min"):
        load(path)


def test_hours_of_audio_are_not_decoded_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    path = _write(tmp_path, rng.normal(0, 0.05, int(20 * RATE)))
    # Decoding stops one second past the limit asked for.
    assert abs(len(decode(path, RATE, max_seconds=5.0)) / RATE - 6.0) < 0.05
    assert abs(len(decode(path, RATE)) / RATE - 20.0) < 0.05


def test_near_silence_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path = _write(tmp_path, rng.normal(0, 0.0005, 6 * RATE))
    with pytest.raises(SampleRejected, match="silent"):
        load(path)


def test_hard_clipping_is_refused(base_sample: Speaker, tmp_path: Path) -> None:
    loud = np.clip(base_sample.audio * 30.0, -1.0, 1.0)
    with pytest.raises(SampleRejected, match="clipped"):
        load(_write(tmp_path, loud))


def test_a_short_burst_in_silence_is_refused(base_sample: Speaker, tmp_path: Path) -> None:
    audio = np.zeros(8 * RATE, dtype=np.float32)
    audio[RATE : RATE + int(0.8 * RATE)] = base_sample.audio[: int(0.8 * RATE)]
    with pytest.raises(SampleRejected, match="stands out from its background"):
        load(_write(tmp_path, audio))


def test_a_quiet_sample_is_brought_up_to_level(base_sample: Speaker, tmp_path: Path) -> None:
    quiet = base_sample.audio * 0.03
    assert rms_dbfs(quiet) < -40
    sample = load_sample(
        _write(tmp_path, quiet), sample_rate=RATE, min_seconds=3, max_seconds=300, target_dbfs=-20
    )
    assert abs(speech_dbfs(sample.audio, RATE) - -20.0) < 1.5


@pytest.mark.parametrize(("fmt", "magic"), [(AudioFormat.MP3, b"ID3"), (AudioFormat.WAV, b"RIFF")])
def test_encode_writes_the_named_format(
    base_sample: Speaker, tmp_path: Path, fmt: AudioFormat, magic: bytes
) -> None:
    data = encode(base_sample.audio, RATE, fmt, 96)
    assert data.startswith(magic)
    path = tmp_path / f"out.{fmt.value}"
    path.write_bytes(data)
    back = decode(path, RATE)
    assert abs(len(back) / RATE - len(base_sample.audio) / RATE) < 0.1


def _gated(seconds: float, rate: int = RATE) -> np.ndarray:
    """Syllable-rate on/off gating: sound that comes and goes like speech does."""
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 3 * t) > 0).astype(np.float32)


@pytest.mark.parametrize(
    ("kind", "detail"),
    [
        ("hiss", "stands out from its background"),
        ("noise bursts", "no voice found"),
        ("chords", "no voice found"),
        ("tone", "steady tone"),
    ],
)
def test_sound_that_is_not_speech_is_refused_with_its_reason(
    tmp_path: Path, kind: str, detail: str
) -> None:
    """A voice-activity detector judges speech presence: loud sound alone is not speech."""
    rng = np.random.default_rng(7)
    t = np.arange(8 * RATE) / RATE
    gate = _gated(8)
    audio = {
        "hiss": rng.normal(0, 0.1, t.size),
        "noise bursts": rng.normal(0, 0.1, t.size) * gate,
        "chords": sum(0.08 * np.sin(2 * np.pi * f * t) for f in (220, 277, 330, 440)) * gate,
        "tone": 0.3 * np.sin(2 * np.pi * 180 * t) * gate,
    }[kind]
    with pytest.raises(SampleRejected, match=detail):
        load(_write(tmp_path, np.asarray(audio, dtype=np.float32)))


def test_speech_under_loud_noise_is_found(base_sample: Speaker, tmp_path: Path) -> None:
    """Speech 5 dB over pink noise is still speech (a level threshold finds none of it)."""
    from bench.degrade import add_noise

    noisy = add_noise(base_sample.audio, base_sample.sample_rate, 5.0)
    sample = load_sample(
        _write(tmp_path, noisy), sample_rate=RATE, min_seconds=3, max_seconds=300, target_dbfs=-20
    )
    assert sample.speech_seconds > 0.6 * len(base_sample.audio) / base_sample.sample_rate
