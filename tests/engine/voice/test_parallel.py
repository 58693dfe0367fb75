"""The parallel-data spectral mapping: learnt from two readings, falls back when it cannot."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from engine.voice import parallel, world
from engine.voice.audio import Sample
from engine.voice.reference import CpuReferenceBackend
from engine.voice.settings import VoiceSettings
from engine.voice.transcribe import TranscriberUnavailable
from tests.engine.voice.conftest import Speaker

pytestmark = [pytest.mark.no_database, pytest.mark.slow(25)]


def _warped(features: world.WorldFeatures, warp: float) -> world.WorldFeatures:
    plan = world.Conversion(0.0, 1.0, 0.0, 1.0, warp, np.zeros(world.N_BANDS))
    return world.convert(features, plan)


def test_a_learnt_mapping_moves_envelopes_toward_the_target(base_sample: Speaker) -> None:
    rate = base_sample.sample_rate
    source = world.analyse(base_sample.audio, rate, aperiodicity=False)
    target = _warped(source, 1.12)  # the same words, formants 12 % up
    mapping = parallel.fit(source.sp, source.f0, target.sp, target.f0, rate, ridge=10.0)
    assert mapping.pairs > 300  # voiced 10 ms frames of a 12 s reading

    voiced = source.voiced
    coded_target = parallel.code(target.sp[voiced], rate)
    before = np.mean((parallel.code(source.sp[voiced], rate) - coded_target) ** 2)
    mapped = parallel.apply_voiced(source, mapping)
    after = np.mean((parallel.code(mapped.sp[voiced], rate) - coded_target) ** 2)
    assert after < 0.6 * before, (before, after)
    # Unvoiced frames are left alone; the round trip through JSON keeps the mapping.
    assert np.array_equal(mapped.sp[~voiced], source.sp[~voiced])
    again = parallel.SpectralMapping.from_json(mapping.to_json())
    assert np.allclose(again.weights, mapping.weights, atol=1e-4)


def test_a_strong_ridge_changes_almost_nothing(base_sample: Speaker) -> None:
    rate = base_sample.sample_rate
    source = world.analyse(base_sample.audio, rate, aperiodicity=False)
    target = _warped(source, 1.12)
    mapping = parallel.fit(source.sp, source.f0, target.sp, target.f0, rate, ridge=1e9)
    # The matrix stays the identity; only the unpenalised offset (a fixed tilt) is learnt.
    assert np.abs(mapping.weights[:-1] - np.eye(parallel.DIM)).max() < 1e-3


def _through_a_channel(
    features: world.WorldFeatures, tilt_db_per_khz: float
) -> world.WorldFeatures:
    """The same speech through a small tilted microphone: no bass below 300 Hz, nothing
    above 7 kHz (the long-term estimate reads such a channel as a 1.2 warp, whatever the
    speaker's own)."""
    freqs = np.linspace(0.0, features.sample_rate / 2, features.sp.shape[1])
    band = np.where((freqs < 300.0) | (freqs > 7000.0), 20.0, 0.0)
    gain_db = tilt_db_per_khz * freqs / 1000.0 - band
    sp = features.sp * 10.0 ** (gain_db / 10.0)[np.newaxis, :]
    return world.WorldFeatures(features.f0, sp, features.ap, features.sample_rate)


@pytest.mark.parametrize("true_warp", [0.9, 1.0, 1.04, 1.08, 1.12])
def test_the_warp_from_aligned_frames_is_not_fooled_by_the_recording_channel(
    base_sample: Speaker, true_warp: float
) -> None:
    """A channel's tilt and band limit pass for a vocal tract in the long-term average
    (female speakers came out with formants moved down); frame pairs tell them apart."""
    rate = base_sample.sample_rate
    source = world.analyse(base_sample.audio, rate, aperiodicity=False)
    target = _through_a_channel(_warped(source, true_warp), tilt_db_per_khz=-2.5)
    i, j = parallel.voiced_pairs(source.sp, source.f0, target.sp, target.f0, rate)
    assert len(i) > 300
    found = world.estimate_warp_parallel(source.sp[i], target.sp[j], rate, 1.2)
    assert abs(found - true_warp) <= 0.015, found
    with pytest.raises(ValueError, match="too few"):
        world.estimate_warp_parallel(source.sp[:3], target.sp[:3], rate, 1.2)


def test_too_little_speech_is_refused(base_sample: Speaker) -> None:
    rate = base_sample.sample_rate
    short = world.analyse(base_sample.audio[: rate // 2], rate, aperiodicity=False)
    with pytest.raises(ValueError, match="too little"):
        parallel.fit(short.sp, short.f0, short.sp, short.f0, rate)


def test_a_reading_with_no_voiced_frame_at_all_is_refused_not_crashed(
    base_sample: Speaker,
) -> None:
    # No aligned voiced pair (a whisper, or the silence before the first word): a clear
    # "too little", not pyworld's IndexError on an empty buffer.
    rate = base_sample.sample_rate
    short = world.analyse(base_sample.audio[: rate // 2], rate, aperiodicity=False)
    silent = np.zeros_like(short.f0)
    with pytest.raises(ValueError, match="too little"):
        parallel.fit(short.sp, silent, short.sp, silent, rate)


class _NoWhisper:
    def transcribe(self, audio: object, sample_rate: int) -> str:
        raise TranscriberUnavailable("faster-whisper is not installed")


def test_without_a_transcriber_the_clone_falls_back_with_a_log_line(
    reference_backend: CpuReferenceBackend, base_sample: Speaker, caplog: pytest.LogCaptureFixture
) -> None:
    backend = CpuReferenceBackend(
        VoiceSettings(),
        encoder=reference_backend.encoder,
        transcriber=_NoWhisper(),  # type: ignore[arg-type]
    )
    backend._piper = reference_backend.piper
    sample = Sample(base_sample.audio, base_sample.sample_rate, 10.0, 10.0)
    with caplog.at_level(logging.WARNING, logger="engine.voice.reference"):
        profile = backend.analyse(sample)
    assert "mapping" not in profile.params
    assert "long-term envelope only" in caplog.text
    assert backend.synthesise("Still speaks.", profile).seconds > 0.5


def test_a_clone_keeps_its_mapping(
    reference_backend: CpuReferenceBackend, speakers: dict[str, Speaker]
) -> None:
    high = speakers["high"]
    profile = reference_backend.analyse(Sample(high.audio, high.sample_rate, 12.0, 12.0))
    assert profile.params["mapping"]["pairs"] > 4 * parallel.DIM


def test_the_warps_tried_are_the_estimate_its_neighbours_and_none() -> None:
    from engine.voice.reference import warp_candidates

    assert warp_candidates(1.1, 1.2) == [1.1, 1.166, 1.038, 1.0]
    # Held within the limits, and no warp tried twice.
    assert warp_candidates(1.2, 1.2) == [1.2, 1.132, 1.0]
    assert warp_candidates(1.0, 1.2) == [1.0, 1.06, 0.943]


def test_a_clone_of_a_higher_voice_keeps_a_warp_near_its_own(
    reference_backend: CpuReferenceBackend, speakers: dict[str, Speaker]
) -> None:
    """The "high" speaker is the base voice with formants x1.15: the warp the clone keeps
    (chosen among the estimate, its neighbours and none) is that one, not "no warp"."""
    high = speakers["high"]
    sample = Sample(high.audio, high.sample_rate, len(high.audio) / high.sample_rate, 10.0)
    profile = reference_backend.analyse(sample)
    assert abs(float(profile.params["warp"]) - 1.15) <= 0.06, profile.params["warp"]
    assert "mapping" in profile.params
