"""Acoustic fingerprints of speech (Chromaprint), and finding one again in a changed copy.

Every speech the engine makes is fingerprinted as it is made (:mod:`engine.voice.trace`
stores it); a clip that circulates later (re-encoded by Discord, cut, sped up) is
fingerprinted the same way and compared with the stored ones.

Why Chromaprint, through ffmpeg: it is the fingerprint AcoustID runs on millions of
recordings, built to survive lossy codecs, and the ffmpeg binary the engine already ships
(imageio-ffmpeg) has its ``chromaprint`` muxer, so no new dependency. It works on a
chroma image (12 pitch classes over time), which lossy codecs and small tempo changes
barely touch; it is *not* made to survive a pitch change (a shift of more than about 1.5 %
moves the chroma). :func:`query_variants` therefore fingerprints an uploaded clip in
several guesses of how it was changed (:func:`query_plan`): read at another rate, which
undoes a speed change (pitch and tempo together) exactly; read at another rate and
time-stretched back, which undoes a pitch-only change; time-stretched only, which undoes a
tempo-only change. bench/trace.py measures what this catches and what it misses.

ffmpeg runs confined (:mod:`engine.confine`) on PCM we wrote ourselves; untrusted files
reach it only decoded by :func:`engine.voice.audio.decode` first.

Blocking code (subprocesses, numpy): call it from a worker or a thread.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from engine.confine import ConfinementError, Confiner, Limits, MiB, process_confiner
from engine.voice.audio import FloatAudio, ffmpeg_exe

Fingerprint = NDArray[np.uint32]
# The rate the PCM handed to Chromaprint is written at (it works at 11025 Hz itself).
FINGERPRINT_RATE = 22050
# Speech is fingerprinted played at half speed: an octave down, which leaves its chroma
# (pitch classes) as it was, and twice as many items per second of speech. Chromaprint's
# filters eat about 2 s of each clip's edges, which at normal speed left a 3 s sentence
# untraceable; at half speed 3 s of speech is enough (2.5 s is not: bench/trace.py).
PLAYBACK = 0.5
# One Chromaprint item per 4096 / 3 samples at 11025 Hz, in seconds of the speech itself.
ITEM_SECONDS = 4096 / 3 / 11025 * PLAYBACK
# Playback rates a clip is also tried at: 2.5 % apart (Chromaprint holds about +-1.5 %
# of pitch), covering changes of speed or pitch up to about +-19 % (3 semitones).
RATE_STEP = 1.025
RATE_STEPS = 7
# Pitch-only changes are tried from this many steps out (nearer ones leave a tempo error
# that Chromaprint tolerates), and tempo-only changes at these factors (+-5 % is held).
PITCH_FROM_STEP = 3
TEMPOS = (0.8, 0.89, 1.12, 1.25)
# A match needs this share of equal bits over at least MIN_OVERLAP items (about 1.2 s of
# speech): unrelated speech stays under 0.75 at its best offset (bench/results/trace.json).
MATCH_THRESHOLD = 0.78
MIN_OVERLAP = 20
# What fingerprinting one clip may cost: ffmpeg reading raw PCM needs little.
FINGERPRINT_LIMITS = Limits(
    memory_bytes=256 * MiB, cpu_seconds=20, wall_seconds=60, output_bytes=4 * MiB
)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


class FingerprintError(RuntimeError):
    """ffmpeg could not fingerprint the audio (it hit a limit or failed)."""


@dataclass(frozen=True)
class Alignment:
    """How well a query matches a stored fingerprint, at its best offset."""

    score: float  # share of equal bits, 0.5 for unrelated audio, 1.0 for the same
    offset_items: int  # where the query starts in the stored speech, in items
    overlap_items: int

    @property
    def offset_seconds(self) -> float:
        return self.offset_items * ITEM_SECONDS

    @property
    def matched(self) -> bool:
        return self.overlap_items >= MIN_OVERLAP and self.score >= MATCH_THRESHOLD


def to_bytes(fp: Fingerprint) -> bytes:
    """The fingerprint as stored: little-endian 32-bit items."""
    return fp.astype("<u4").tobytes()


def from_bytes(data: bytes) -> Fingerprint:
    """A stored fingerprint back as an array."""
    return np.frombuffer(data[: len(data) - len(data) % 4], dtype="<u4").astype(np.uint32)


def _pcm(audio: FloatAudio, sample_rate: int) -> bytes:
    if sample_rate != FINGERPRINT_RATE and audio.size:
        n = round(len(audio) * FINGERPRINT_RATE / sample_rate)
        # Linear interpolation is enough: Chromaprint low-passes to 5.5 kHz anyway.
        audio = np.interp(
            np.arange(n) * (sample_rate / FINGERPRINT_RATE), np.arange(len(audio)), audio
        ).astype(np.float32)
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2").tobytes()


def _run(pcm_path: Path, read_rate: int, tempo: float, confiner: Confiner) -> Fingerprint:
    cmd = [
        ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-threads",
        "1",
        # Raw PCM we wrote: no demuxer is probed. Reading it at another rate than it was
        # written at plays it faster or slower (pitch and tempo together).
        "-f",
        "s16le",
        "-ar",
        str(read_rate),
        "-ac",
        "1",
        "-i",
        f"file:{pcm_path}",
        # A tempo change (pitch kept) to undo, after the rate's.
        *(["-af", f"atempo={tempo:.5f}"] if tempo != 1.0 else []),
        "-f",
        "chromaprint",
        "-fp_format",
        "raw",
        "-",
    ]
    try:
        raw = confiner.run_command(cmd, FINGERPRINT_LIMITS)
    except ConfinementError as exc:
        raise FingerprintError(f"could not fingerprint the audio ({exc.limit})") from exc
    return from_bytes(raw)


@dataclass(frozen=True)
class Variant:
    """One guess at how a clip was changed, as the way to read it back: at ``rate`` times
    its speed (pitch and tempo), then time-stretched by ``tempo`` (pitch kept)."""

    rate: float = 1.0
    tempo: float = 1.0


def fingerprints(
    audio: FloatAudio,
    sample_rate: int,
    plan: Sequence[Variant] = (Variant(),),
    *,
    confiner: Confiner | None = None,
) -> list[Fingerprint]:
    """Chromaprint fingerprints of ``audio`` read back as each :class:`Variant` of ``plan``
    (then played at :data:`PLAYBACK` speed)."""
    confiner = confiner or process_confiner()
    with tempfile.TemporaryDirectory(prefix="tada-fp-") as tmp:
        path = Path(tmp) / "speech.s16"
        path.write_bytes(_pcm(audio, sample_rate))
        return [
            _run(path, round(FINGERPRINT_RATE * PLAYBACK * v.rate), v.tempo, confiner) for v in plan
        ]


def fingerprint(
    audio: FloatAudio, sample_rate: int, *, confiner: Confiner | None = None
) -> Fingerprint:
    """The Chromaprint fingerprint of ``audio`` as it is (what generation stores)."""
    return fingerprints(audio, sample_rate, confiner=confiner)[0]


def query_plan() -> list[Variant]:
    """The guesses a clip is tried in: as it is first, then speed, pitch and tempo changes.

    A clip sped up by ``s`` is read at ``1/s``; one pitched by ``p`` (tempo kept) is read
    at ``1/p``, which leaves it ``1/p`` slow, and stretched by ``p``; one whose tempo
    changed by ``t`` is stretched by ``1/t``.
    """
    plan = [Variant()]
    for k in range(1, RATE_STEPS + 1):
        plan += [Variant(rate=RATE_STEP**k), Variant(rate=RATE_STEP**-k)]
    for k in range(PITCH_FROM_STEP, RATE_STEPS + 1):
        for p in (RATE_STEP**k, RATE_STEP**-k):
            plan.append(Variant(rate=1 / p, tempo=p))
    plan += [Variant(tempo=1 / t) for t in TEMPOS]
    return plan


def query_variants(
    audio: FloatAudio, sample_rate: int, *, confiner: Confiner | None = None
) -> list[Fingerprint]:
    """Fingerprints of an uploaded clip in every guess of :func:`query_plan`."""
    return fingerprints(audio, sample_rate, query_plan(), confiner=confiner)


def align(query: Fingerprint, stored: Fingerprint) -> Alignment:
    """The best offset of ``query`` within ``stored`` (or of ``stored`` within ``query``).

    Every offset that overlaps both by at least :data:`MIN_OVERLAP` items (or, for clips
    shorter than that, by the shorter one whole) is scored by its share of equal bits.
    """
    m, n = len(query), len(stored)
    need = min(MIN_OVERLAP, m, n)
    best = Alignment(0.0, 0, 0)
    if need == 0:
        return best
    # Bit differences of every item pair, summed along each diagonal (one offset each).
    diff = np.bitwise_xor(query.astype(np.uint32)[:, None], stored.astype(np.uint32)[None, :])
    bits = _POPCOUNT[diff.view(np.uint8)].reshape(m, n, 4).sum(axis=2, dtype=np.int64)
    diagonal = (np.arange(n)[None, :] - np.arange(m)[:, None] + (m - 1)).ravel()
    wrong = np.bincount(diagonal, weights=bits.ravel(), minlength=m + n - 1)
    overlap = np.bincount(diagonal, minlength=m + n - 1)
    scores = np.where(overlap >= need, 1.0 - wrong / (32.0 * np.maximum(overlap, 1)), 0.0)
    at = int(np.argmax(scores))
    if scores[at] <= 0.0:
        return best
    return Alignment(float(scores[at]), at - (m - 1), int(overlap[at]))


def best_alignment(variants: Sequence[Fingerprint], stored: Fingerprint) -> Alignment:
    """The best :func:`align` of any of a clip's variants with one stored fingerprint."""
    found = [align(v, stored) for v in variants]
    usable = [a for a in found if a.overlap_items >= min(MIN_OVERLAP, len(stored))]
    return max(usable or found, key=lambda a: a.score, default=Alignment(0.0, 0, 0))
