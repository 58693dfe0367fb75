"""Cloning quality on speakers not made from the base voice, judged by an independent encoder.

The bounded CI form of ``bench/voice_quality.py``: seven speakers (three real recordings,
three women), two generated sentences each, Whisper tiny.en for intelligibility; and one
degraded condition (room noise at 10 dB SNR with reverberation, bench/degrade.py) on two
of the real speakers, bounded in CPU seconds. The data
come from Debian packages (``make voice-data``) and the dev extra; without them the test
skips on a developer's machine, naming what is missing and how to install it
(``tests/prerequisites.py``), and fails in CI (``CI=true``), where ``make test`` installs
them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import voice_quality as vq
from engine.voice.reference import CpuReferenceBackend
from engine.voice.settings import VoiceSettings
from engine.voice.similarity import DVECTOR, RESEMBLYZER, Calibration, Likeness, likeness
from tests.prerequisites import VOICE_DATA

pytestmark = [pytest.mark.no_database, pytest.mark.slow(150)]

# Piper samples its speech, so the clones' readings (and their WER) changed from run to run
# with what the worker's shared back end had read before. Each evaluation speaks through a
# back end of its own whose Piper session is made right after onnxruntime's generator is
# seeded: the same readings in every run. It shares the shared back end's encoder and
# transcriber (their models load once).
EVALUATION_SEED = 1206


def seeded(backend: CpuReferenceBackend) -> CpuReferenceBackend:
    import onnxruntime

    onnxruntime.set_seed(EVALUATION_SEED)
    fresh = CpuReferenceBackend(
        backend.settings, encoder=backend.encoder, transcriber=backend.transcriber
    )
    assert fresh.sample_rate  # its Piper session, made now
    return fresh


@pytest.fixture(scope="module")
def evaluation(
    reference_backend: CpuReferenceBackend, tmp_path_factory: pytest.TempPathFactory
) -> vq.Evaluation:
    directory = tmp_path_factory.mktemp("voice-quality")
    try:
        # One Kokoro voice here (it is the slowest material to make); the bench uses two.
        speakers = vq.all_speakers(directory, kokoro_voices=("jf_alpha",), kokoro_sentences=4)
        judge, own, asr = vq.DVectorJudge(), vq.ResemblyzerJudge(), vq.WhisperASR()
    except vq.MaterialMissing as exc:
        # A skip that says what is missing and how to install it; under CI=true it is a
        # failure (tests/conftest.py), where `make test` installs the data.
        pytest.skip(VOICE_DATA.skip_reason(str(exc)) or str(exc))
    # Both sentences: Piper samples its speech, and one sentence's reading moved a speaker's
    # WER by up to 0.3 from run to run (a full run read four of eight at 0.33 or more where
    # the next read them under 0.2); each speaker's WER is the mean of the two.
    return vq.evaluate(
        seeded(reference_backend),
        speakers,
        settings=VoiceSettings(),
        judge=judge,
        own=own,
        asr=asr,
        texts=vq.GENERATION_TEXTS,
        directory=Path(directory),
        # The pitch is tested in test_quality.py and test_pitch.py; here pYIN would cost
        # about 40 CPU s for a column no test reads.
        pitch_judge=False,
    )


# One degraded condition on two real speakers (a man, a woman): the one the issue found
# refusing 5 of 6 speakers, room noise at 10 dB SNR with reverberation.
DEGRADED = "noise10_reverb"
DEGRADED_SPEAKERS = ("librivox", "alsa")


@pytest.fixture(scope="module")
def noisy(
    reference_backend: CpuReferenceBackend, tmp_path_factory: pytest.TempPathFactory
) -> vq.Evaluation:
    directory = tmp_path_factory.mktemp("voice-quality-noisy")
    try:
        speakers = [s for s in vq.human_speakers() if s.name in DEGRADED_SPEAKERS]
        judge, asr = vq.DVectorJudge(), vq.WhisperASR()
    except vq.MaterialMissing as exc:
        pytest.skip(VOICE_DATA.skip_reason(str(exc)) or str(exc))
    return vq.evaluate(
        seeded(reference_backend),
        speakers,
        settings=VoiceSettings(),
        judge=judge,
        own=vq.ResemblyzerJudge(reference_backend.encoder),
        asr=asr,
        directory=Path(directory),
        condition=DEGRADED,
        pitch_judge=False,
    )


def test_a_noisy_reverberant_sample_is_cloned_after_denoising(noisy: vq.Evaluation) -> None:
    """The issue found 5 of 6 speakers refused here and the one accepted at +0.125.

    Judged on the clean held-out part. With the front end librivox +0.35 and alsa +0.32
    (clean +0.45 and +0.30), every speaker accepted; without its denoiser +0.24 and -0.03
    (bench/results/voice_quality_conditions_front_end.md). This round's 8 speakers:
    bench/results/voice_quality_conditions.md.
    """
    assert not noisy.refused, noisy.refused
    assert {r.speaker for r in noisy.speakers} == set(DEGRADED_SPEAKERS)
    gains = {r.speaker: r.judge_gain for r in noisy.speakers}
    for r in noisy.speakers:
        assert r.front_end is not None and r.front_end["denoised"], r.front_end
        # CPU seconds (all threads), the denoiser's 0.3-0.7 s per second of audio included.
        assert r.create_cpu_seconds < 60.0, r.speaker
    # Two speakers are held to the mean, with no clone moving away (without the denoiser
    # alsa read -0.03 and the mean +0.10). Before the readings were seeded, one run read
    # alsa at +0.05 where the bench read +0.32; seeded: librivox +0.35, alsa +0.31.
    assert min(gains.values()) > -0.05, gains
    assert sum(gains.values()) / len(gains) > 0.12, gains
    # One garbled reading is allowed, not two (seeded: librivox 0.10, alsa 0.14).
    wers = sorted(r.wer_clone for r in noisy.speakers)
    assert wers[0] <= 0.2 and wers[-1] <= 0.5, [(r.speaker, r.transcripts) for r in noisy.speakers]


def test_the_evaluation_covers_the_speakers_it_promises(evaluation: vq.Evaluation) -> None:
    rows = evaluation.speakers
    assert len(rows) >= 6
    assert sum(r.gender == "f" for r in rows) >= 3
    assert sum(r.kind == "human" for r in rows) >= 2
    for r in rows:
        # Clone and held-out parts are different recordings, each long enough to judge.
        assert r.clone_seconds >= 6.0 and r.held_out_seconds >= 3.5, r.speaker


def test_the_judge_tells_speakers_apart(evaluation: vq.Evaluation) -> None:
    """Without this the similarity columns would mean nothing."""
    for encoder, points in evaluation.calibration.items():
        gap = points["same_speaker_median"] - points["different_speakers_median"]
        assert gap > 0.3, (encoder, points)
        assert points["same_speaker_min"] > points["different_speakers_median"], encoder


def test_clones_stay_intelligible_and_fast(evaluation: vq.Evaluation) -> None:
    # Piper samples its speech: unseeded, a word or two moved a speaker's WER by 0.05-0.1
    # from run to run, and now and then one synthesis of one speaker garbled a sentence (CI
    # once read alsa's clone at 0.86 where the bench gives 0.11). Three unseeded runs of
    # this evaluation read medians of 0.09, 0.11 and 0.12; one quiet full run 0.23. The
    # readings are now seeded (EVALUATION_SEED): the same every run, median 0.13, one
    # speaker over 0.35 (jf_alpha 0.37). So: every speaker intelligible but at most two of
    # the seven, and the median where the bench puts it (bench/results/voice_quality.json:
    # 0.09-0.19 per speaker), which a clone that garbles across the board fails.
    wers = sorted(r.wer_clone for r in evaluation.speakers)
    garbled = [
        (r.speaker, r.wer_clone, r.transcripts) for r in evaluation.speakers if r.wer_clone > 0.35
    ]
    assert len(garbled) <= 2, garbled
    assert wers[len(wers) // 2] <= 0.2, wers
    for r in evaluation.speakers:
        assert r.wer_base <= 0.15, r
        # CPU seconds, not the wall clock: a loaded machine (CI shares its 2 cores) once
        # read a 19 s sample's clone at 42 s of wall time. Quiet, the wall RTF is about 0.3
        # and a clone 5 to 14 s; the CPU figures count every thread, so a little more.
        assert r.rtf_cpu < 1.5, r.speaker
        assert r.create_cpu_seconds < 40.0, r.speaker


def test_cloning_moves_toward_the_speaker_on_held_out_speech(evaluation: vq.Evaluation) -> None:
    summary = evaluation.summary()
    # bench/results/voice_quality.json: +0.31 on average (+0.19 with the warp taken from the
    # long-term envelopes, +0.12 before the spectral mapping); every speaker but sphinx (a
    # 7 s sample, between -0.02 and +0.07 from run to run) gains +0.3 or more.
    assert summary["all"]["judge_gain"] > 0.2, summary
    assert sum(r.judge_gain >= 0.1 for r in evaluation.speakers) >= 5, evaluation.speakers
    assert summary["all"]["own_clone"] > summary["all"]["own_base"] + 0.08, summary


def test_word_error_rate_counts_word_edits() -> None:
    assert vq.wer("the cat sat", "the cat sat") == 0.0
    assert vq.wer("the cat sat", "a cat sat down") == pytest.approx(2 / 3)
    assert vq.wer("Ten of clubs.", "10 of clubs") == 0.0


@pytest.mark.parametrize("calibration", [RESEMBLYZER, DVECTOR], ids=lambda c: c.encoder)
def test_the_member_facing_calibration_matches_the_evaluation(
    evaluation: vq.Evaluation, calibration: Calibration
) -> None:
    """The constants in engine/voice/similarity.py come from this evaluation; keep them so."""
    measured = evaluation.calibration[calibration.encoder]
    assert abs(calibration.same - measured["same_speaker_median"]) < 0.05, measured
    assert abs(calibration.different - measured["different_speakers_median"]) < 0.06, measured
    # A typical stranger reads near 0 %, and nine in ten strangers below "close".
    assert calibration.percent(measured["different_speakers_median"]) <= 5
    assert likeness(calibration.percent(measured["different_speakers_p90"]) or 0) is not (
        Likeness.CLOSE
    )
