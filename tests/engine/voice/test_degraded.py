"""Real speech as members upload it: pitch and acceptance on degraded recordings.

Each speaker's clean clone part (real recordings from Debian packages, and flite's rms, a
man's voice DIO tracked at 1.5x on the phone band) is degraded the ways bench/degrade.py
builds deterministically: a Discord voice message, a phone call, room noise at 10 dB SNR
(with and without reverberation), a laptop microphone. Without the Debian data the test
skips on a developer's machine and fails in CI, like test_voice_quality.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from bench import degrade
from bench import voice_quality as vq
from engine.voice import world
from engine.voice.audio import SampleRejected, load_sample
from engine.voice.reference import MIN_F0_SPREAD, MIN_VOICED_SHARE
from engine.voice.settings import F0Tracker

pytestmark = [pytest.mark.no_database, pytest.mark.slow(35)]

RATE = 22050
CLIP_SECONDS = 8.0
SPEAKERS = ("librivox", "alsa", "rms")


@dataclass(frozen=True)
class Recording:
    speaker: str
    condition: str
    audio: NDArray[np.float32]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Recording]:
    directory = tmp_path_factory.mktemp("degraded")
    try:
        found = vq.human_speakers() + vq.flite_speakers(directory)
    except vq.MaterialMissing as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"voice evaluation data not installed: {exc}")
    out = []
    for speaker in found:
        if speaker.name not in SPEAKERS:
            continue
        clean = vq._resample(speaker.clone, speaker.sample_rate, RATE)[: int(CLIP_SECONDS * RATE)]
        out.append(Recording(speaker.name, "clean", clean))
        for name, condition in degrade.CONDITIONS.items():
            out.append(Recording(speaker.name, name, condition(clean, RATE)))
    return out


def _median_f0(audio: NDArray[np.float32]) -> float:
    f0, _ = world.pitch(audio, RATE, F0Tracker.DIO, octave_check=True)
    return float(np.median(f0[f0 > 0]))


def test_pitch_holds_on_degraded_speech(recordings: list[Recording]) -> None:
    """No octave or fifth error: each degraded median within 10 % of the clean one's.

    Reverberation smears the pitch of a tail into the next syllable: it may move the median
    by up to 15 % (measured 9-12 %), still far from an octave (100 %) or a fifth (50 %).
    """
    clean = {r.speaker: _median_f0(r.audio) for r in recordings if r.condition == "clean"}
    off = []
    for r in recordings:
        if r.condition == "clean":
            continue
        ratio = _median_f0(r.audio) / clean[r.speaker]
        limit = 0.15 if r.condition == "noise10_reverb" else 0.10
        if abs(np.log(ratio)) > np.log(1.0 + limit):
            off.append((r.speaker, r.condition, round(ratio, 2)))
    assert not off, (clean, off)


def test_the_degradations_are_deterministic() -> None:
    rng = np.random.default_rng(1)
    audio = (0.1 * np.sin(np.arange(RATE * 2) * 2 * np.pi * 150 / RATE)).astype(np.float32)
    audio += 0.01 * rng.standard_normal(audio.size).astype(np.float32)
    for name, condition in degrade.CONDITIONS.items():
        first, second = condition(audio, RATE), condition(audio, RATE)
        assert first.shape == audio.shape, name
        assert np.array_equal(first, second), name


def test_degraded_speech_is_accepted_and_found_to_be_a_voice(
    recordings: list[Recording], tmp_path: Path
) -> None:
    """Load_sample and the back end's voice checks take every degraded sample.

    The issue found 5 of 6 refused at 10 dB SNR with reverberation ("only 0.2-1.5 s of the
    sample stands out from its background") and 2 of 6 phone-band men as "noise or music".
    """
    refused = []
    for r in recordings:
        path = vq.wav_file(r.audio, RATE, tmp_path / f"{r.speaker}-{r.condition}.wav")
        try:
            sample = load_sample(
                path, sample_rate=RATE, min_seconds=3.0, max_seconds=300.0, target_dbfs=-20.0
            )
        except SampleRejected as exc:
            refused.append((r.speaker, r.condition, str(exc)))
            continue
        stats = world.speaker_stats(sample.audio, RATE, F0Tracker.DIO, octave_check=True)
        share = stats.voiced_seconds / sample.speech_seconds
        if share < MIN_VOICED_SHARE or stats.log_f0_std < MIN_F0_SPREAD:
            refused.append((r.speaker, r.condition, f"voiced share {share:.2f}"))
    assert not refused, refused
