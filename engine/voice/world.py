"""Speaker analysis and conversion with the WORLD vocoder (pyworld). Pure numpy, blocking.

Conversion moves three things toward the target speaker, each estimated from a sample:
- F0: log-F0 mean and spread (z-score mapping), so pitch and intonation range match;
- formants: one linear frequency-warp factor (a longer or shorter vocal tract);
- timbre: a smooth long-term spectral envelope correction (what is left after warping).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.voice.settings import F0Tracker

with warnings.catch_warnings():
    # pyworld 0.3.5 reads its version through the deprecated pkg_resources.
    warnings.simplefilter("ignore")
    import pyworld

Floats = NDArray[np.float64]
FRAME_PERIOD_MS = 5.0
F0_FLOOR = 55.0
F0_CEIL = 600.0
# The long-term envelope is compared on this many bands, on a log-frequency axis.
N_BANDS = 48
BAND_LOW_HZ = 120.0
BAND_HIGH_HZ = 7000.0
# Warp factors tried when matching the base voice's envelope to a sample's.
WARP_GRID = np.round(np.arange(0.80, 1.2501, 0.01), 3)


@dataclass(frozen=True)
class WorldFeatures:
    """WORLD's decomposition of one stretch of speech."""

    f0: Floats  # Hz per frame, 0 where unvoiced
    sp: Floats  # spectral envelope, power, (frames, bins)
    ap: Floats  # aperiodicity, (frames, bins)
    sample_rate: int

    @property
    def voiced(self) -> NDArray[np.bool_]:
        return self.f0 > 0


@dataclass(frozen=True)
class VoiceStats:
    """What the converter needs to know about one speaker."""

    log_f0_mean: float
    log_f0_std: float
    envelope: Floats  # long-term log-power envelope on the band grid (N_BANDS,)
    voiced_seconds: float
    # The band the recording carried (a phone's 300-3400 Hz): outside it the envelope
    # says nothing about the speaker. None: the whole band.
    band_hz: tuple[float, float] | None = None

    @property
    def median_f0_hz(self) -> float:
        return float(np.exp(self.log_f0_mean))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "log_f0_mean": self.log_f0_mean,
            "log_f0_std": self.log_f0_std,
            "envelope": [round(float(v), 5) for v in self.envelope],
            "voiced_seconds": self.voiced_seconds,
        }
        if self.band_hz is not None:
            out["band_hz"] = [round(float(v), 1) for v in self.band_hz]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VoiceStats:
        band = data.get("band_hz")
        return cls(
            log_f0_mean=float(data["log_f0_mean"]),
            log_f0_std=float(data["log_f0_std"]),
            envelope=np.asarray(data["envelope"], dtype=np.float64),
            voiced_seconds=float(data["voiced_seconds"]),
            band_hz=(float(band[0]), float(band[1])) if band else None,
        )


def in_band(freqs_hz: Floats, band_hz: tuple[float, float] | None) -> NDArray[np.bool_]:
    """Which frequencies lie safely inside a recording's band (5 % in from each edge)."""
    if band_hz is None:
        return np.ones(np.shape(freqs_hz), dtype=bool)
    low, high = band_hz
    return np.asarray((freqs_hz >= low * 1.05) & (freqs_hz <= high * 0.95))


@dataclass(frozen=True)
class Conversion:
    """The mapping from the base voice to one target speaker."""

    source_log_f0_mean: float
    source_log_f0_std: float
    target_log_f0_mean: float
    target_log_f0_std: float
    warp: float  # >1 moves formants up (shorter vocal tract)
    correction: Floats  # log-power correction per band (N_BANDS,)

    def to_json(self) -> dict[str, Any]:
        return {
            "source_log_f0_mean": self.source_log_f0_mean,
            "source_log_f0_std": self.source_log_f0_std,
            "target_log_f0_mean": self.target_log_f0_mean,
            "target_log_f0_std": self.target_log_f0_std,
            "warp": self.warp,
            "correction": [round(float(v), 5) for v in self.correction],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Conversion:
        return cls(
            source_log_f0_mean=float(data["source_log_f0_mean"]),
            source_log_f0_std=float(data["source_log_f0_std"]),
            target_log_f0_mean=float(data["target_log_f0_mean"]),
            target_log_f0_std=float(data["target_log_f0_std"]),
            warp=float(data["warp"]),
            correction=np.asarray(data["correction"], dtype=np.float64),
        )


def frames_of(samples: int, sample_rate: int) -> int:
    """How many 5 ms frames WORLD's trackers give ``samples`` of audio."""
    return int(1000.0 * samples / sample_rate / FRAME_PERIOD_MS) + 1


def pitch(
    audio: NDArray[Any],
    sample_rate: int,
    method: F0Tracker = F0Tracker.DIO,
    *,
    octave_check: bool = False,
) -> tuple[Floats, Floats]:
    """F0 per frame and the frame times.

    ``octave_check`` (DIO only): fold DIO's octave and fifth errors back toward the
    smooth path through each frame's harmonic comb (:func:`octave_checked`). Members'
    samples need it: on a phone band, in noise or from a headset DIO reads a voice 1.5x or
    2x off (an 8 kHz headset: 61 Hz for a 91 Hz voice), and the Piper base voice 1.8x high
    (168 Hz where pYIN reads 93). The CPU reference back end checks every track it makes,
    samples and base speech alike, so that both sides of the F0 mapping are measured the
    same way. pYIN and CREPE read as well but cost 10-100x more
    (bench/results/pitch_trackers.json).
    """
    x = np.ascontiguousarray(audio, dtype=np.float64)
    if method is F0Tracker.HARVEST:
        f0, t = pyworld.harvest(
            x, sample_rate, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=FRAME_PERIOD_MS
        )
        return f0, t
    f0, t = pyworld.dio(
        x, sample_rate, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=FRAME_PERIOD_MS
    )
    f0 = pyworld.stonemask(x, f0, t, sample_rate)
    if octave_check:
        f0 = octave_checked(f0, harmonic_contrast(x, sample_rate))
    return f0, t


# The octave check: candidate F0s on a log grid, the harmonics it looks at, and its frames.
_GRID = np.geomspace(F0_FLOOR, F0_CEIL, 160)
_HARMONICS = 12
_CHECK_HOP_S = 0.01
_CHECK_WINDOW_S = 0.08
# Frames whose harmonic comb is read at once (see harmonic_contrast).
_COMB_BLOCK = 128
# Contrast (natural log of magnitude) above which a frame's harmonic comb counts as clear.
_CLEAR_CONTRAST = 1.0


@dataclass(frozen=True)
class HarmonicContrast:
    """Per frame and candidate F0: how much the spectrum at its harmonics stands above the
    spectrum halfway between them (whitened log-magnitude, so level and formants cancel).

    At the true F0 every harmonic is a peak and every midpoint a valley; an octave too low
    puts half its harmonics in valleys, an octave (or a fifth) too high puts its midpoints
    on peaks. Only the harmonics present count, so a phone band's missing fundamental
    does not hide the voice's pitch (DIO and Harvest follow the fundamental itself).
    """

    values: Floats  # (frames, len(_GRID))
    hop_s: float

    def clear_centre(self) -> float | None:
        """Median F0 of the frames with a clear comb; None when there are too few."""
        best = self.values.max(axis=1)
        clear = best > _CLEAR_CONTRAST
        if int(clear.sum()) < 10:
            return None
        return float(np.exp(np.median(np.log(_GRID[self.values[clear].argmax(axis=1)]))))

    def at(self, frames: NDArray[np.int64], f0: Floats) -> Floats:
        """The contrast of candidate ``f0`` (Hz) in analysis frames ``frames``."""
        cols = np.clip(np.round(np.log(f0 / F0_FLOOR) / np.log(_GRID[1] / _GRID[0])), 0, None)
        cols = np.minimum(cols.astype(np.int64), len(_GRID) - 1)
        inside = (f0 >= F0_FLOOR * 0.97) & (f0 <= F0_CEIL * 1.03)
        return np.where(inside, self.values[frames, cols], -np.inf)


def harmonic_contrast(x: NDArray[Any], sample_rate: int) -> HarmonicContrast:
    """The :class:`HarmonicContrast` of ``x`` (80 ms windows every 10 ms, up to 3.4 kHz)."""
    n_fft = int(2 ** np.ceil(np.log2(_CHECK_WINDOW_S * sample_rate)))
    hop = max(1, int(_CHECK_HOP_S * sample_rate))
    padded = np.pad(np.asarray(x, dtype=np.float64), (n_fft // 2, n_fft // 2))
    n = max(1, 1 + (len(padded) - n_fft) // hop)
    if len(padded) < n_fft:
        padded = np.pad(padded, (0, n_fft - len(padded)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n]
    mag = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)).astype(np.float32)
    logs = np.log(mag + 1e-9 * float(mag.max()) + 1e-12)
    bin_hz = sample_rate / n_fft
    width = max(3, round(250.0 / bin_hz) | 1)
    # Whitened: each bin against the mean of the 250 Hz around it.
    cums = np.cumsum(np.pad(logs, ((0, 0), (width // 2 + 1, width // 2)), mode="edge"), axis=1)
    white = logs - (cums[:, width:] - cums[:, :-width]) / width
    top = min(3400.0, sample_rate / 2 * 0.95)
    k = np.arange(1, _HARMONICS + 1, dtype=np.float64)

    def taps(freqs: Floats) -> tuple[NDArray[np.bool_], NDArray[np.int64], Any, Any]:
        keep = freqs <= top
        pos = np.clip(freqs / bin_hz, 0, white.shape[1] - 2)
        lo = np.floor(pos).astype(np.int64)
        frac = (pos - lo).astype(np.float32)
        return keep, lo, frac, np.maximum(keep.sum(axis=-1), 1)

    def comb(rows: Any, at: tuple[NDArray[np.bool_], NDArray[np.int64], Any, Any]) -> Any:
        keep, lo, frac, count = at
        vals = rows[:, lo] * (1 - frac) + rows[:, lo + 1] * frac  # (frames, grid, k)
        return (vals * keep).sum(axis=-1) / count

    harmonics = taps(_GRID[:, None] * k[None, :])
    midpoints = taps(_GRID[:, None] * (k[None, :] - 0.5))
    values = np.empty((white.shape[0], len(_GRID)), dtype=np.float64)
    # A block of frames at a time: the (frames, grid, harmonics) products of a whole 30 s
    # sample (23 MB each) left the cache; by blocks the same sums cost a third less.
    for a in range(0, white.shape[0], _COMB_BLOCK):
        rows = white[a : a + _COMB_BLOCK]
        values[a : a + _COMB_BLOCK] = comb(rows, harmonics) - comb(rows, midpoints)
    return HarmonicContrast(values=values, hop_s=_CHECK_HOP_S)


# The guide: the path through the comb's candidates that a voice can take (Viterbi).
# Moving costs this much contrast per octave between 10 ms frames (speech glides; a
# tracker's octave jump does not), and straying from the voice's centre this much per
# octave squared (a weak, noisy stretch stays in the speaker's range). At 0.3 an 8 kHz
# headset speaker kept a quarter of his frames at 2/3 of his pitch (spread 0.32 where
# pYIN reads 0.08) and his clone came out rough; at 2.0: 0.07, the base voice unchanged.
_JUMP_COST = 3.0
_CENTRE_COST = 2.0
# A frame's folded value is kept when it lies within this ratio of the guide's.
_MATCH = 1.2
# Folds tried on each frame: the value as tracked first, then octaves, fifths, twelfths.
_TRACK_FOLDS = np.array([1.0, 0.5, 2.0, 2.0 / 3.0, 1.5, 1.0 / 3.0, 3.0])


def guide_track(contrast: HarmonicContrast) -> Floats | None:
    """F0 (Hz) per analysis frame of ``contrast``: the smooth path through each frame's
    harmonic comb, held near the voice's centre; None when no stretch has a clear comb.

    Read on the comb alone it agrees with pYIN within 3 % on the Piper base voice, its
    0.8x tape-speed copy and an 8 kHz headset recording, with or without a phone band
    (bench/results/pitch_trackers.json), at a tenth of pYIN's cost.
    """
    centre = contrast.clear_centre()
    if centre is None:
        return None
    logs = np.log2(_GRID)
    score = contrast.values - _CENTRE_COST * (logs - np.log2(centre)) ** 2
    # Symmetric: jump[to, from] = jump[from, to].
    jump = _JUMP_COST * np.abs(logs[:, None] - logs[None, :])
    n, states = score.shape
    back = np.empty((n, states), dtype=np.int16)
    acc = score[0].copy()
    rows = np.arange(states)
    moves = np.empty((states, states))
    for i in range(1, n):
        # (to, from): each row's best predecessor is found along contiguous memory, half
        # the time of reading down the columns of (from, to).
        np.subtract(acc[None, :], jump, out=moves)
        best = moves.argmax(axis=1)
        back[i] = best
        acc = moves[rows, best] + score[i]
    path = np.empty(n, dtype=np.int64)
    path[-1] = int(acc.argmax())
    for i in range(n - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    # Between grid points: the vertex of a parabola through the best and its neighbours.
    rows = np.arange(n)
    inner = np.clip(path, 1, states - 2)
    left, mid, right = (contrast.values[rows, inner + d] for d in (-1, 0, 1))
    curve = left - 2 * mid + right
    shift = np.where(curve < 0, 0.5 * (left - right) / np.where(curve < 0, curve, -1.0), 0.0)
    shift = np.where(path == inner, np.clip(shift, -0.5, 0.5), 0.0)
    step = np.log(_GRID[1] / _GRID[0])
    return np.asarray(_GRID[path] * np.exp(shift * step))


def octave_checked(f0: Floats, contrast: HarmonicContrast) -> Floats:
    """``f0`` (a 5 ms track) with octave, fifth and twelfth errors folded back.

    Each voiced frame takes the fold of its value (x1 first, then /2, x2, x2/3, x3/2, /3,
    x3) that lies within 20 % of the guide (:func:`guide_track`: the smooth path through
    the harmonic comb); a frame no fold brings there takes the guide's value. The
    tracker's precision is kept where it only erred by a fold. Voicing is left as found.
    """
    voiced = np.flatnonzero(f0 > 0)
    if voiced.size == 0:
        return f0
    guide = guide_track(contrast)
    if guide is None:
        return f0
    cols = np.minimum(
        np.round(voiced * (FRAME_PERIOD_MS / 1000.0) / contrast.hop_s).astype(np.int64),
        len(guide) - 1,
    )
    want = guide[cols]
    candidates = f0[voiced, None] * _TRACK_FOLDS[None, :]
    off = np.abs(np.log(candidates / want[:, None]))
    # The first fold (in the order above) that lands within the match.
    close = off <= np.log(_MATCH)
    first = np.where(close.any(axis=1), close.argmax(axis=1), -1)
    rows = np.arange(voiced.size)
    out = f0.copy()
    out[voiced] = np.where(first >= 0, candidates[rows, np.maximum(first, 0)], want)
    return out


def analyse(
    audio: NDArray[Any],
    sample_rate: int,
    *,
    aperiodicity: bool = True,
    f0_track: tuple[Floats, Floats] | None = None,
    method: F0Tracker = F0Tracker.DIO,
    octave_check: bool = False,
) -> WorldFeatures:
    """F0, spectral envelope and aperiodicity of ``audio``.

    ``aperiodicity=False`` skips D4C (a third of the cost) when nothing will be resynthesised;
    ``f0_track`` reuses a :func:`pitch` result instead of tracking F0 again.
    """
    x = np.ascontiguousarray(audio, dtype=np.float64)
    f0, t = (
        f0_track
        if f0_track is not None
        else pitch(x, sample_rate, method, octave_check=octave_check)
    )
    # WORLD's default envelope floor (71 Hz) keeps the FFT at 1024 bins at 22 kHz: twice
    # as fast as fitting 55 Hz, and F0 below it still gets a usable envelope.
    sp = pyworld.cheaptrick(x, f0, t, sample_rate)
    ap = pyworld.d4c(x, f0, t, sample_rate) if aperiodicity else np.zeros((0, sp.shape[1]))
    return WorldFeatures(f0=f0, sp=sp, ap=ap, sample_rate=sample_rate)


def utterance_f0(f0_tracks: list[Floats], reference: VoiceStats) -> tuple[float, float]:
    """Log-F0 mean and spread of the base voice for one text.

    Piper's pitch differs from text to text, so the text's own statistics are the right
    source for the mapping; with little voiced speech they are noisy, so they lean on the
    base voice's long-run statistics (1 s of voicing weighs as much as the reference).
    """
    voiced = np.concatenate([f[f > 0] for f in f0_tracks]) if f0_tracks else np.zeros(0)
    n = float(voiced.size)
    if n < 10:
        return reference.log_f0_mean, reference.log_f0_std
    mean, std = _robust_log_f0(voiced)
    prior = 1000.0 / FRAME_PERIOD_MS
    w = n / (n + prior)
    return (
        w * mean + (1 - w) * reference.log_f0_mean,
        w * std + (1 - w) * reference.log_f0_std,
    )


def synthesise(features: WorldFeatures) -> NDArray[np.float32]:
    """WORLD resynthesis of (possibly modified) features."""
    y = pyworld.synthesize(
        np.ascontiguousarray(features.f0),
        np.ascontiguousarray(features.sp),
        np.ascontiguousarray(features.ap),
        features.sample_rate,
        FRAME_PERIOD_MS,
    )
    return np.asarray(y, dtype=np.float32)


def _band_centres_hz(sample_rate: int) -> Floats:
    return np.geomspace(BAND_LOW_HZ, min(BAND_HIGH_HZ, sample_rate / 2 * 0.95), N_BANDS)


def long_term_envelope(features: WorldFeatures) -> Floats:
    """Mean log-power envelope of voiced frames, sampled on the log-frequency band grid."""
    voiced = features.voiced
    frames = features.sp[voiced] if voiced.any() else features.sp
    log_sp = np.log(np.maximum(frames, 1e-16)).mean(axis=0)
    n_bins = features.sp.shape[1]
    freqs = np.linspace(0.0, features.sample_rate / 2, n_bins)
    return np.interp(_band_centres_hz(features.sample_rate), freqs, log_sp)


def _robust_log_f0(f0: Floats) -> tuple[float, float]:
    """Median and MAD-based spread of log F0: octave errors barely move them."""
    logs = np.log(f0[f0 > 0])
    if logs.size < 10:
        raise ValueError("too little voiced speech")
    median = float(np.median(logs))
    spread = float(1.4826 * np.median(np.abs(logs - median)))
    return median, max(spread, 1e-3)


def speaker_stats(
    audio: NDArray[Any],
    sample_rate: int,
    method: F0Tracker = F0Tracker.DIO,
    envelope_stride: int = 4,
    *,
    octave_check: bool = False,
    band_hz: tuple[float, float] | None = None,
    f0_track: tuple[Floats, Floats] | None = None,
) -> VoiceStats:
    """A speaker's F0 statistics and long-term envelope: F0 on every frame, envelope on a few.

    A long-term average needs no 5 ms resolution; fitting a quarter of the frames makes
    the envelope four times cheaper and changes the average by a hair. ``f0_track``: a
    :func:`pitch` result of ``audio`` made with the same ``method`` and ``octave_check``.
    """
    x = np.ascontiguousarray(audio, dtype=np.float64)
    f0, t = (
        f0_track
        if f0_track is not None
        else pitch(x, sample_rate, method, octave_check=octave_check)
    )
    mean, std = _robust_log_f0(f0)
    keep = slice(None, None, envelope_stride)
    sp = pyworld.cheaptrick(
        x, np.ascontiguousarray(f0[keep]), np.ascontiguousarray(t[keep]), sample_rate
    )
    sparse = WorldFeatures(
        f0=f0[keep], sp=sp, ap=np.zeros((0, sp.shape[1])), sample_rate=sample_rate
    )
    return VoiceStats(
        log_f0_mean=mean,
        log_f0_std=std,
        envelope=long_term_envelope(sparse),
        voiced_seconds=float((f0 > 0).sum()) * FRAME_PERIOD_MS / 1000.0,
        band_hz=band_hz,
    )


def _warp_envelope(envelope: Floats, warp: float, sample_rate: int) -> Floats:
    """The band envelope of a voice whose formants sit ``warp`` times higher."""
    centres = _band_centres_hz(sample_rate)
    # Out-of-range reads hold the edge value: the grid's ends are not formant territory.
    return np.interp(np.log(centres / warp), np.log(centres), envelope)


def _shape(envelope: Floats) -> Floats:
    """The envelope without its level and overall tilt: formant structure only."""
    x = np.arange(envelope.size, dtype=np.float64)
    coeffs = np.polyfit(x, envelope, 1)
    return envelope - np.polyval(coeffs, x)


def estimate_warp(
    source: Floats,
    target: Floats,
    sample_rate: int,
    max_warp: float,
    band_hz: tuple[float, float] | None = None,
) -> float:
    """The formant-warp factor that best lines the source's envelope shape up with the target's
    (inside the target recording's band only)."""
    best, best_err = 1.0, float("inf")
    keep = in_band(_band_centres_hz(sample_rate), band_hz)
    goal = _shape(target[keep])
    for warp in WARP_GRID:
        if warp > max_warp or warp < 1.0 / max_warp:
            continue
        warped = _warp_envelope(source, float(warp), sample_rate)[keep]
        err = float(np.mean((_shape(warped) - goal) ** 2))
        # A small pull toward 1.0: when the evidence is flat, do not move formants.
        err += 0.02 * float(np.log(warp)) ** 2
        if err < best_err:
            best, best_err = float(warp), err
    return best


def _log_at(log_sp: Floats, freqs_hz: Floats, sample_rate: int) -> Floats:
    """Frames of a log-power envelope read at ``freqs_hz`` (linear between FFT bins)."""
    n_bins = log_sp.shape[1]
    pos = np.clip(freqs_hz / (sample_rate / 2) * (n_bins - 1), 0, n_bins - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), n_bins - 2)
    frac = pos - lo
    return np.asarray(log_sp[:, lo] * (1.0 - frac) + log_sp[:, lo + 1] * frac)


def estimate_warp_parallel(
    source_sp: Floats,
    target_sp: Floats,
    sample_rate: int,
    max_warp: float,
    band_hz: tuple[float, float] | None = None,
) -> float:
    """The formant warp that best explains aligned frame pairs of the same sounds.

    ``source_sp`` and ``target_sp`` are envelopes of time-aligned voiced frames (the base
    voice and the speaker saying the same words). For each warp, what a fixed filter
    cannot explain (the residual with its mean over frames taken out: recording channel
    and long-term timbre, which the envelope correction covers) is what the warp must; the
    per-frame movements of formants, not the long-term average, decide it. With one
    average envelope a channel's tilt or a band limit can pass for a vocal tract.

    The warped source is read straight from its FFT bins at each band centre / warp:
    interpolating between coarse bands would smooth half-band shifts more than whole
    ones and bias the choice toward them.
    """
    if len(source_sp) != len(target_sp) or len(source_sp) < 10:
        raise ValueError("too few aligned frames to estimate a warp")
    centres = _band_centres_hz(sample_rate)
    # Only where the speaker's recording carries sound (a phone band stops at 3.4 kHz).
    centres = centres[in_band(centres, band_hz)]
    log_src = np.log(np.maximum(source_sp, 1e-16))
    tgt = _log_at(np.log(np.maximum(target_sp, 1e-16)), centres, sample_rate)
    tgt -= tgt.mean(axis=1, keepdims=True)
    best, best_err = 1.0, float("inf")
    for warp in WARP_GRID:
        if warp > max_warp or warp < 1.0 / max_warp:
            continue
        # Band k of the warped voice is the source at centre_k / warp.
        shifted = _log_at(log_src, centres / float(warp), sample_rate)
        residual = tgt - (shifted - shifted.mean(axis=1, keepdims=True))
        residual -= residual.mean(axis=0)
        err = float(np.mean(residual**2))
        # The same pull toward 1.0 as the long-term estimate, relative to the error's scale.
        err *= 1.0 + 0.5 * float(np.log(warp)) ** 2
        if err < best_err:
            best, best_err = float(warp), err
    return best


def _smooth(values: Floats, width: int = 5) -> Floats:
    kernel = np.hanning(width + 2)[1:-1]
    kernel /= kernel.sum()
    padded = np.pad(values, width // 2, mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def plan_conversion(
    source: VoiceStats,
    target: VoiceStats,
    sample_rate: int,
    *,
    f0_spread_weight: float,
    warp_weight: float,
    envelope_weight: float,
    max_warp: float,
    max_envelope_db: float,
    warp_estimate: float | None = None,
) -> Conversion:
    """Everything needed to convert the base voice (``source``) toward ``target``.

    ``warp_estimate``: a formant warp measured elsewhere (from parallel speech,
    :func:`estimate_warp_parallel`); without one it is estimated from the two long-term
    envelopes.
    """
    warp_full = (
        estimate_warp(source.envelope, target.envelope, sample_rate, max_warp, target.band_hz)
        if warp_estimate is None
        else float(np.clip(warp_estimate, 1.0 / max_warp, max_warp))
    )
    warp = float(np.exp(warp_weight * np.log(warp_full)))
    warped = _warp_envelope(source.envelope, warp, sample_rate)
    # Level differences are the recording's, not the speaker's: match shape and tilt only.
    # Outside the band the recording carried nothing is learnt (no phone band as timbre).
    keep = in_band(_band_centres_hz(sample_rate), target.band_hz)
    diff = target.envelope - warped
    diff -= diff[keep].mean() if keep.any() else diff.mean()
    diff[~keep] = 0.0
    limit = max_envelope_db / 10.0 * np.log(10.0)  # dB of power -> natural log of power
    correction = np.clip(_smooth(diff), -limit, limit) * envelope_weight
    target_std = source.log_f0_std + f0_spread_weight * (target.log_f0_std - source.log_f0_std)
    return Conversion(
        source_log_f0_mean=source.log_f0_mean,
        source_log_f0_std=source.log_f0_std,
        target_log_f0_mean=target.log_f0_mean,
        target_log_f0_std=target_std,
        warp=warp,
        correction=correction,
    )


def convert(features: WorldFeatures, conversion: Conversion) -> WorldFeatures:
    """Apply a conversion to WORLD features of base-voice speech."""
    f0 = features.f0.copy()
    voiced = f0 > 0
    z = (np.log(f0[voiced]) - conversion.source_log_f0_mean) / conversion.source_log_f0_std
    f0[voiced] = np.exp(conversion.target_log_f0_mean + z * conversion.target_log_f0_std)
    f0[voiced] = np.clip(f0[voiced], F0_FLOOR, F0_CEIL)

    n_bins = features.sp.shape[1]
    rate = features.sample_rate
    freqs = np.linspace(0.0, rate / 2, n_bins)
    log_sp = np.log(np.maximum(features.sp, 1e-16))
    # Linear frequency warp: the output at f takes the input at f / warp.
    src_pos = np.clip(np.arange(n_bins) / conversion.warp, 0, n_bins - 1)
    lo = np.floor(src_pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_bins - 1)
    frac = src_pos - lo
    warped = log_sp[:, lo] * (1.0 - frac) + log_sp[:, hi] * frac
    # The band correction, interpolated to every FFT bin on the log-frequency axis.
    centres = _band_centres_hz(rate)
    safe = np.maximum(freqs, 1.0)
    corr = np.interp(np.log(safe), np.log(centres), conversion.correction)
    sp = np.exp(warped + corr[np.newaxis, :])
    return WorldFeatures(f0=f0, sp=sp, ap=features.ap, sample_rate=rate)
