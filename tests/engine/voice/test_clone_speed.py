"""A clone does no work twice and learns its mapping from a bounded part of a long sample
(issue 26, item 5: a 30 s clone within 5 s; bench/voice_clone_speed.py measures it)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engine.voice import world
from engine.voice.audio import Sample
from engine.voice.reference import CpuReferenceBackend
from engine.voice.settings import VoiceSettings
from tests.engine.voice.conftest import Speaker

# The back end alone: the PostgreSQL pass leaves it out.
pytestmark = pytest.mark.no_database


def test_a_long_sample_is_cut_in_a_pause_for_the_mapping() -> None:
    from engine.voice.reference import PARALLEL_MAX_SECONDS, parallel_part

    rate = 16000
    t = np.arange(30 * rate) / rate
    audio = (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    gap = (t >= 13.4) & (t < 13.6)
    audio[gap] = 0.0
    part = parallel_part(audio, rate)
    assert 13.4 <= len(part) / rate <= 13.6
    assert len(part) <= PARALLEL_MAX_SECONDS * rate
    short = audio[: 10 * rate]
    assert parallel_part(short, rate) is short


class _Listening:
    """The real transcriber, remembering how much audio it was given."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.seconds: list[float] = []

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> str:
        self.seconds.append(len(audio) / sample_rate)
        return str(self.real.transcribe(audio, sample_rate))


def test_a_long_clone_tracks_the_samples_pitch_once_and_maps_from_its_start(
    reference_backend: CpuReferenceBackend,
    base_sample: Speaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engine.voice.reference import PARALLEL_MAX_SECONDS

    listening = _Listening(reference_backend.transcriber)
    backend = CpuReferenceBackend(
        VoiceSettings(),
        encoder=reference_backend.encoder,
        transcriber=listening,  # type: ignore[arg-type]
    )
    backend._piper = reference_backend.piper
    backend.warm_up()  # the base voice's own reading is not one of the sample's
    rate = base_sample.sample_rate
    # About 32 s of speech: the test sample read twice.
    audio = np.concatenate([base_sample.audio, np.zeros(rate // 4, np.float32), base_sample.audio])
    seconds = len(audio) / rate
    assert seconds > 2 * PARALLEL_MAX_SECONDS - 4
    partials = reference_backend.encoder.partials(audio, rate)
    # As the voice-activity detector counts it: a fifth of the trimmed sample is pauses, so
    # the mapping's part holds 10-12 s of speech, under PARALLEL_SECONDS.
    sample = Sample(audio, rate, seconds, 0.8 * seconds, partials=partials)
    readings: list[str] = []
    real_base_speech = backend.base_speech

    def base_speech(text: str) -> Any:
        readings.append(text)
        return real_base_speech(text)

    monkeypatch.setattr(backend, "base_speech", base_speech)

    tracked: list[int] = []
    real_pitch = world.pitch

    def pitch(x: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        tracked.append(len(x))
        return real_pitch(x, *args, **kwargs)

    monkeypatch.setattr(world, "pitch", pitch)
    profile = backend.analyse(sample)

    assert "mapping" in profile.params
    assert tracked.count(len(audio)) == 1  # statistics and mapping share one track
    assert len(listening.seconds) == 1
    assert PARALLEL_MAX_SECONDS - 3.5 <= listening.seconds[0] <= PARALLEL_MAX_SECONDS
    # A part with 10-12 s of speech is read once by the base voice, not until its readings
    # hold PARALLEL_SECONDS of speech (that doubled the mapping's cost for half the samples).
    assert len(readings) == 1
    # The stored embedding is the utterance's own, taken from the speaker check's windows.
    own = reference_backend.encoder.embed(audio, rate)
    assert np.allclose(profile.embedding_array(), own, atol=1e-5)


def test_the_embedding_from_the_speaker_checks_windows_is_the_utterances_own(
    reference_backend: CpuReferenceBackend, base_sample: Speaker
) -> None:
    """resemblyzer's utterance embedding is the normalised mean of its windows' ones: taking
    it from the windows the speaker check embedded changes nothing but the time."""
    encoder = reference_backend.encoder
    audio, rate = base_sample.audio, base_sample.sample_rate
    partials = encoder.partials(audio, rate)
    assert len(partials) > 3
    mean = partials.mean(axis=0)
    assert np.allclose(mean / np.linalg.norm(mean), encoder.embed(audio, rate), atol=1e-6)


def test_the_transcript_for_the_mapping_is_one_greedy_pass(
    reference_backend: CpuReferenceBackend, base_sample: Speaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No temperature fallback: it decoded a sample of repeated phrases six times over."""
    transcriber = reference_backend.transcriber
    model = transcriber._load()
    seen: list[dict[str, Any]] = []
    real = model.transcribe

    def transcribe(audio: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real(audio, **kwargs)

    monkeypatch.setattr(model, "transcribe", transcribe)
    rate = base_sample.sample_rate
    assert transcriber.transcribe(base_sample.audio[: 4 * rate], rate)
    assert len(seen) == 1
    assert seen[0].get("temperature") in (0.0, (0.0,), [0.0])


def test_a_part_is_read_until_its_readings_hold_enough_speech() -> None:
    from engine.voice.reference import MAX_READINGS, ONE_READING_SECONDS, parallel_readings

    rate = 16000

    def sample(seconds: float, speech: float) -> Sample:
        return Sample(np.zeros(int(seconds * rate), np.float32), rate, seconds, speech)

    assert parallel_readings(sample(5.0, 4.0), 5 * rate) == 3
    assert parallel_readings(sample(10.0, 8.0), 10 * rate) == 2
    assert parallel_readings(sample(2.0, 1.0), 2 * rate) == MAX_READINGS
    # 9-12 s of speech: once (it was twice, for words the speaker said only once).
    assert parallel_readings(sample(14.0, 13.0), 14 * rate) == 1
    assert parallel_readings(sample(12.0, ONE_READING_SECONDS), 12 * rate) == 1
    assert parallel_readings(sample(30.0, 26.0), 13 * rate) == 1
    # A part cut from a sample with little speech in it is still read twice (7 s in 12 s).
    assert parallel_readings(sample(30.0, 17.6), 12 * rate) == 2
