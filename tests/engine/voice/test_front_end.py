"""The sample front end (engine/voice/frontend.py): denoising only where it helps, clipping
repair, trimming, the band a recording carries, and refusals for two speakers or too little
speech once trimmed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from bench import degrade
from bench import voice_quality as vq
from engine.voice import frontend, parallel, world
from engine.voice.audio import (
    Sample,
    SampleRejected,
    SeveralSpeakers,
    TooShortAfterTrimming,
    load_sample,
)
from engine.voice.reference import CpuReferenceBackend
from tests.engine.voice.conftest import Speaker, wav_bytes

pytestmark = pytest.mark.no_database

RATE = 22050


def _load(tmp_path: Path, audio: np.ndarray, name: str = "s.wav", **kw: object) -> Sample:
    path = tmp_path / name
    path.write_bytes(wav_bytes(np.asarray(audio, dtype=np.float32), RATE))
    return load_sample(
        path,
        sample_rate=RATE,
        min_seconds=3.0,
        max_seconds=300.0,
        target_dbfs=-20.0,
        **kw,  # type: ignore[arg-type]
    )


def test_a_clean_sample_is_not_denoised(base_sample: Speaker, tmp_path: Path) -> None:
    sample = _load(tmp_path, base_sample.audio)
    assert sample.front_end is not None
    assert sample.front_end.snr_db > frontend.DENOISE_BELOW_DB, sample.front_end
    assert not sample.front_end.denoised
    assert sample.band_hz is None, sample.front_end


def test_a_noisy_sample_is_denoised(base_sample: Speaker, tmp_path: Path) -> None:
    noisy = degrade.noise10(base_sample.audio, RATE)
    start = time.process_time()
    sample = _load(tmp_path, noisy)
    cpu = time.process_time() - start
    report = sample.front_end
    assert report is not None and report.denoised, report
    assert report.snr_db < 18.0, report
    # DeepFilterNet3 takes the pink noise out: the floor drops by far more than 10 dB.
    assert report.snr_after_db is not None and report.snr_after_db > report.snr_db + 10.0, report
    # 14 s of audio; about 0.3 s per second on one core, the model build included.
    assert cpu < 15.0, cpu


def test_mild_clipping_is_repaired_and_heavy_clipping_refused(
    base_sample: Speaker, tmp_path: Path
) -> None:
    audio = base_sample.audio / float(np.max(np.abs(base_sample.audio)))
    mild = np.clip(audio * 1.6, -1.0, 1.0)
    share = frontend.clipped_share(mild)
    assert 0.0005 < share < frontend.REPAIRABLE_CLIPPED_SHARE, share
    sample = _load(tmp_path, mild, "mild.wav")
    assert sample.front_end is not None and sample.front_end.clipped_repaired > 0
    with pytest.raises(SampleRejected, match="clipped"):
        _load(tmp_path, np.clip(audio * 30.0, -1.0, 1.0), "hard.wav")


def test_repair_redraws_a_clipped_sine() -> None:
    t = np.arange(RATE) / RATE
    sine = (1.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    clipped = np.clip(sine, -1.0, 1.0)
    repaired, count = frontend.repair_clipping(clipped, RATE)
    assert count > 0
    stuck = np.abs(clipped) >= 0.999
    before = float(np.abs(clipped[stuck] - sine[stuck]).mean())
    after = float(np.abs(repaired[stuck] - sine[stuck]).mean())
    assert after < before / 3, (before, after)


def test_pauses_and_silence_around_the_speech_are_cut(base_sample: Speaker, tmp_path: Path) -> None:
    pad = np.zeros(3 * RATE, dtype=np.float32)
    sample = _load(tmp_path, np.concatenate([pad, base_sample.audio, pad]))
    assert sample.front_end is not None
    assert sample.front_end.trimmed_seconds > 5.0, sample.front_end
    assert sample.seconds < len(base_sample.audio) / RATE + 0.6


def test_too_little_speech_once_trimmed_is_refused(base_sample: Speaker, tmp_path: Path) -> None:
    """2.3 s of speech in 8 s of silence: enough voice to be heard, too little to clone."""
    audio = np.zeros(8 * RATE, dtype=np.float32)
    speech = base_sample.audio[: int(2.3 * RATE)]
    audio[2 * RATE : 2 * RATE + len(speech)] = speech
    with pytest.raises(TooShortAfterTrimming, match=r"record at least 3 s of yourself speaking"):
        _load(tmp_path, audio)


def test_a_phone_call_is_measured_as_band_limited(base_sample: Speaker, tmp_path: Path) -> None:
    sample = _load(tmp_path, degrade.phone(base_sample.audio, RATE))
    assert sample.band_hz is not None, sample.front_end
    low, high = sample.band_hz
    assert 3300.0 <= high <= 4700.0, sample.band_hz
    assert low < 400.0, sample.band_hz
    # A laptop mic and a voice message are not: their bands pass 7 kHz (the analysis grid).
    for condition in (degrade.opus32, degrade.laptop):
        full = frontend.measure_band(condition(base_sample.audio, RATE), RATE)
        assert full[1] > 7000.0, (condition.__name__, full)


def test_the_conversion_learns_nothing_outside_the_samples_band() -> None:
    """A target that is the base voice through a phone band: the long-term correction
    above the band is nothing, where without the band it would cut the top away."""
    rate = RATE
    centres = np.geomspace(world.BAND_LOW_HZ, min(world.BAND_HIGH_HZ, rate / 2 * 0.95), 48)
    source_env = -0.0004 * centres
    phone_env = source_env - np.where(centres > 3400.0, 8.0, 0.0)
    source = world.VoiceStats(np.log(110.0), 0.15, source_env, 10.0)
    kw = dict(
        f0_spread_weight=1.0,
        warp_weight=1.0,
        envelope_weight=1.0,
        max_warp=1.3,
        max_envelope_db=12.0,
        warp_estimate=1.0,
    )
    blind = world.plan_conversion(
        source, world.VoiceStats(np.log(110.0), 0.15, phone_env, 10.0), rate, **kw
    )  # type: ignore[arg-type]
    banded = world.VoiceStats(np.log(110.0), 0.15, phone_env, 10.0, band_hz=(300.0, 3400.0))
    aware = world.plan_conversion(source, banded, rate, **kw)  # type: ignore[arg-type]
    top = centres > 4000.0
    assert float(np.min(blind.correction[top])) < -1.0
    assert float(np.max(np.abs(aware.correction[top]))) < 0.05
    # And the band survives the profile's JSON.
    assert world.VoiceStats.from_json(banded.to_json()).band_hz == (300.0, 3400.0)


def test_the_mapping_target_outside_the_band_is_the_source() -> None:
    rng = np.random.default_rng(3)
    n_bins = 513
    freqs = np.linspace(0, RATE / 2, n_bins)
    source = np.exp(rng.normal(0, 1, (50, n_bins)))
    target = source * 2.0
    target[:, freqs > 3400] = 1e-12
    filled = parallel.outside_band_from(target, source, RATE, (300.0, 3400.0))
    above = freqs > 3600
    assert np.allclose(filled[:, above] / source[:, above], 2.0, rtol=0.05)
    inside = (freqs > 400) & (freqs < 3000)
    assert np.allclose(filled[:, inside], target[:, inside], rtol=1e-9)


@pytest.fixture(scope="module")
def real_speakers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    try:
        found = vq.human_speakers()
    except vq.MaterialMissing as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"voice evaluation data not installed: {exc}")
    return {s.name: vq._resample(s.clone, s.sample_rate, RATE) for s in found}


def test_two_speakers_are_refused_and_one_is_not(
    real_speakers: dict[str, np.ndarray], reference_backend: CpuReferenceBackend, tmp_path: Path
) -> None:
    encoder = reference_backend.encoder
    man, woman = real_speakers["librivox"], real_speakers["alsa"]
    both = np.concatenate([man[: 8 * RATE], woman])
    with pytest.raises(SeveralSpeakers, match="record only yourself"):
        _load(tmp_path, both, "both.wav", encoder=encoder)
    for name, audio in (("man", man), ("man-noisy", degrade.noise10_reverb(man, RATE))):
        sample = _load(tmp_path, audio, f"{name}.wav", encoder=encoder)
        assert sample.partials is not None and len(sample.partials) >= 4, name
