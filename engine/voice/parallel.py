"""A spectral mapping trained on parallel data: the base voice reads what the speaker said.

The sample's transcript (Whisper tiny.en, :mod:`engine.voice.transcribe`) is spoken by the
base voice; dynamic time warping lines the two up frame by frame, and a ridge regression
learns to turn the base voice's spectral envelope (WORLD's coded envelope, a mel-cepstrum
like vector) into the speaker's. Unlike the long-term envelope correction it can move each
formant by its own amount, and it learns from the very sounds the speaker made.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.voice.world import WorldFeatures

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pyworld

Floats = NDArray[np.float64]
DIM = 24
# Frames kept for the alignment: one in DTW_STRIDE (10 ms at WORLD's 5 ms frames).
DTW_STRIDE = 2


@dataclass(frozen=True)
class SpectralMapping:
    """``target = [source, 1] @ weights`` on coded envelopes (DIM + 1, DIM)."""

    weights: Floats
    pairs: int  # aligned frame pairs it was fitted on

    def to_json(self) -> dict[str, Any]:
        return {
            "weights": [[round(float(v), 5) for v in row] for row in self.weights],
            "pairs": self.pairs,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpectralMapping:
        return cls(np.asarray(data["weights"], dtype=np.float64), int(data["pairs"]))


def code(sp: Floats, sample_rate: int, dim: int = DIM) -> Floats:
    return np.asarray(pyworld.code_spectral_envelope(np.ascontiguousarray(sp), sample_rate, dim))


def decode(coded: Floats, sample_rate: int, fft_size: int) -> Floats:
    return np.asarray(
        pyworld.decode_spectral_envelope(np.ascontiguousarray(coded), sample_rate, fft_size)
    )


def _normalised(x: Floats) -> Floats:
    return (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)


def align(source: Floats, target: Floats) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """DTW path between two coded-envelope sequences (each normalised, energy left out)."""
    import librosa

    a = _normalised(source[:, 1:])
    b = _normalised(target[:, 1:])
    _, path = librosa.sequence.dtw(X=a.T, Y=b.T, metric="euclidean", backtrack=True)
    path = path[::-1]
    return path[:, 0].astype(np.int64), path[:, 1].astype(np.int64)


def voiced_pairs(
    source_sp: Floats,
    source_f0: Floats,
    target_sp: Floats,
    target_f0: Floats,
    sample_rate: int,
    dim: int = DIM,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Frame indices (into the full 5 ms frame sequences) of DTW-aligned pairs, both voiced."""
    src = code(source_sp[::DTW_STRIDE], sample_rate, dim)
    tgt = code(target_sp[::DTW_STRIDE], sample_rate, dim)
    i, j = align(src, tgt)
    keep = (source_f0[::DTW_STRIDE] > 0)[i] & (target_f0[::DTW_STRIDE] > 0)[j]
    return i[keep] * DTW_STRIDE, j[keep] * DTW_STRIDE


def fit(
    source_sp: Floats,
    source_f0: Floats,
    target_sp: Floats,
    target_f0: Floats,
    sample_rate: int,
    ridge: float = 1.0,
    dim: int = DIM,
    pairs: tuple[NDArray[np.int64], NDArray[np.int64]] | None = None,
) -> SpectralMapping:
    """Learn the base-to-speaker envelope mapping from two readings of the same words.

    Only pairs of voiced frames train it: vowels carry the formants a speaker is known by,
    and silence would teach it nothing. ``pairs``: an alignment already made
    (:func:`voiced_pairs`), otherwise it is made here.
    """
    if pairs is None:
        pairs = voiced_pairs(source_sp, source_f0, target_sp, target_f0, sample_rate, dim)
    i, j = pairs
    # Before coding: pyworld fails on an empty buffer (no voiced pair at all).
    if len(i) < 4 * dim:
        raise ValueError("too little aligned speech to learn a mapping")
    x = code(source_sp[i], sample_rate, dim)
    y = code(target_sp[j], sample_rate, dim)
    xa = np.hstack([x, np.ones((len(x), 1))])
    # The ridge pulls toward "change nothing" (identity), not toward zero: a mapping
    # shrunk toward zero would average every sound into one and lose the words.
    reg = ridge * np.eye(dim + 1)
    reg[-1, -1] = 0.0
    prior = np.vstack([np.eye(dim), np.zeros((1, dim))])
    weights = np.linalg.solve(xa.T @ xa + reg, xa.T @ y + reg @ prior)
    return SpectralMapping(weights=np.asarray(weights, dtype=np.float64), pairs=len(x))


def outside_band_from(
    target_sp: Floats, source_sp: Floats, sample_rate: int, band_hz: tuple[float, float] | None
) -> Floats:
    """The target's envelopes with what lies outside its recording's band taken from the
    aligned source frames (level-matched at each band edge), so a mapping learnt on them
    changes nothing there: a phone's band limits are not the speaker's timbre.

    ``target_sp`` and ``source_sp``: envelopes of aligned frame pairs (same shape).
    """
    if band_hz is None:
        return target_sp
    from engine.voice.world import in_band

    n_bins = target_sp.shape[1]
    freqs = np.linspace(0.0, sample_rate / 2, n_bins)
    keep = in_band(freqs, band_hz)
    if not keep.any():
        return target_sp
    inside = np.flatnonzero(keep)
    lo, hi = inside[0], inside[-1]
    log_t = np.log(np.maximum(target_sp, 1e-16))
    log_s = np.log(np.maximum(source_sp, 1e-16))
    out = log_t.copy()
    edge = 4  # bins averaged at each edge for the level match
    upper = (log_t[:, hi - edge : hi + 1] - log_s[:, hi - edge : hi + 1]).mean(axis=1)
    lower = (log_t[:, lo : lo + edge + 1] - log_s[:, lo : lo + edge + 1]).mean(axis=1)
    out[:, hi + 1 :] = log_s[:, hi + 1 :] + upper[:, np.newaxis]
    out[:, :lo] = log_s[:, :lo] + lower[:, np.newaxis]
    return np.asarray(np.exp(out))


def band_limited(
    audio: NDArray[np.float32], sample_rate: int, band_hz: tuple[float, float] | None
) -> NDArray[np.float32]:
    """``audio`` with everything outside ``band_hz`` removed (an FFT brick wall)."""
    if band_hz is None:
        return audio
    spectrum = np.fft.rfft(audio.astype(np.float64))
    freqs = np.fft.rfftfreq(len(audio), 1.0 / sample_rate)
    spectrum[(freqs < band_hz[0]) | (freqs > band_hz[1])] = 0.0
    return np.asarray(np.fft.irfft(spectrum, len(audio)), dtype=np.float32)


def apply(sp: Floats, mapping: SpectralMapping, sample_rate: int) -> Floats:
    """Map every frame's envelope; the source's frame energy is kept (loudness contour)."""
    coded = code(sp, sample_rate, mapping.weights.shape[1])
    mapped = np.hstack([coded, np.ones((len(coded), 1))]) @ mapping.weights
    mapped[:, 0] = coded[:, 0]
    fft_size = (sp.shape[1] - 1) * 2
    return decode(mapped, sample_rate, fft_size)


def apply_voiced(features: WorldFeatures, mapping: SpectralMapping) -> WorldFeatures:
    """The mapping on voiced frames (what it was learnt on); other frames stay as they are."""
    mapped = apply(features.sp, mapping, features.sample_rate)
    sp = np.where(features.voiced[:, np.newaxis], mapped, features.sp)
    return WorldFeatures(f0=features.f0, sp=sp, ap=features.ap, sample_rate=features.sample_rate)
