"""Degraded versions of a clean recording, built deterministically: what members upload.

Each condition is a function ``(audio, rate) -> audio`` at the same rate, so a clone part
can be degraded and judged against its clean held-out part. Codecs run through the bundled
ffmpeg (imageio-ffmpeg); noise, reverberation, clipping and clicks come from a seeded
generator, so the same input gives the same output on every run.

- ``opus32``: a Discord voice message (Opus 32 kbps);
- ``phone``: a phone call (300-3400 Hz, 8 kHz, MP3 32 kbps);
- ``noise10``: room noise (pink, 10 dB under the speech);
- ``noise10_reverb``: the same in a reverberant room (RT60 about 0.5 s);
- ``laptop``: a laptop microphone (150 Hz-7 kHz, soft clipping, keyboard clicks, AAC 64 kbps).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import imageio_ffmpeg
import numpy as np
from numpy.typing import NDArray
from scipy.signal import fftconvolve

Audio = NDArray[np.float32]
SEED = 26


def _ffmpeg(
    audio: Audio, rate: int, args: list[str], out_format: str, in_format: str | None = None
) -> Audio:
    """Encode ``audio`` with ``args`` and decode the result back to mono float at ``rate``."""
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2").tobytes()
    raw = ["-f", "s16le", "-ar", str(rate), "-ac", "1", "-i", "pipe:0"]
    encoded = subprocess.run(
        [exe, "-nostdin", "-hide_banner", "-loglevel", "error", *raw, *args, "-f", out_format, "-"],
        input=pcm,
        capture_output=True,
        check=True,
    ).stdout
    demuxer = ["-f", in_format or out_format, "-i", "pipe:0"]
    pcm_out = ["-ac", "1", "-ar", str(rate), "-f", "s16le", "-"]
    decoded = subprocess.run(
        [exe, "-nostdin", "-hide_banner", "-loglevel", "error", *demuxer, *pcm_out],
        input=encoded,
        capture_output=True,
        check=True,
    ).stdout
    out = np.frombuffer(decoded, dtype="<i2").astype(np.float32) / 32768.0
    # Codecs pad (MP3 by a frame or two): keep the input's length.
    return np.pad(out[: len(audio)], (0, max(0, len(audio) - len(out))))


def _speech_rms(audio: Audio, rate: int) -> float:
    """RMS of the louder half of 30 ms frames: the speech, not the pauses."""
    frame = int(0.03 * rate)
    n = len(audio) // frame
    power = np.mean(audio[: n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1)
    return float(np.sqrt(np.mean(power[power >= np.median(power)])))


def pink_noise(n: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """Unit-RMS noise with a 1/f power spectrum (a fan, a room), from a seeded generator."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n)
    return noise / np.sqrt(np.mean(noise**2))


def add_noise(audio: Audio, rate: int, snr_db: float, seed: int = SEED) -> Audio:
    """Pink noise ``snr_db`` under the speech level."""
    rng = np.random.default_rng(seed)
    noise = pink_noise(len(audio), rng) * _speech_rms(audio, rate) * 10.0 ** (-snr_db / 20.0)
    return (audio + noise).astype(np.float32)


def reverb(audio: Audio, rate: int, rt60_s: float = 0.5, seed: int = SEED) -> Audio:
    """A synthetic room: exponentially decaying noise after the direct sound."""
    rng = np.random.default_rng(seed + 1)
    n = int(rt60_s * rate)
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60_s) * 0.25
    tail[: int(0.003 * rate)] = 0.0
    tail[0] = 1.0
    wet = fftconvolve(audio.astype(np.float64), tail)[: len(audio)]
    peak = max(float(np.max(np.abs(wet))), 1e-9)
    return (wet / peak * max(float(np.max(np.abs(audio))), 1e-3)).astype(np.float32)


def opus32(audio: Audio, rate: int) -> Audio:
    return _ffmpeg(audio, rate, ["-c:a", "libopus", "-b:a", "32k"], "ogg")


def phone(audio: Audio, rate: int) -> Audio:
    band = ["-af", "highpass=f=300:poles=2,highpass=f=300:poles=2,lowpass=f=3400:poles=2"]
    return _ffmpeg(audio, rate, [*band, "-ar", "8000", "-c:a", "libmp3lame", "-b:a", "32k"], "mp3")


def noise10(audio: Audio, rate: int) -> Audio:
    return add_noise(audio, rate, 10.0)


def noise10_reverb(audio: Audio, rate: int) -> Audio:
    return add_noise(reverb(audio, rate), rate, 10.0)


def laptop(audio: Audio, rate: int) -> Audio:
    band = ["-af", "highpass=f=150:poles=2,lowpass=f=7000:poles=2"]
    rng = np.random.default_rng(SEED + 2)
    # Too much gain into a soft-clipping preamp, then keyboard clicks every second or so.
    hot = np.tanh(audio.astype(np.float64) * (0.98 / max(float(np.max(np.abs(audio))), 1e-3)) * 2)
    click_len = int(0.004 * rate)
    for start in rng.integers(0, max(1, len(hot) - click_len), size=int(len(hot) / rate)):
        hot[start : start + click_len] += (
            rng.standard_normal(click_len) * 0.3 * np.exp(-np.arange(click_len) / (0.001 * rate))
        )
    hot = add_noise(hot.astype(np.float32), rate, 30.0)
    return _ffmpeg(np.clip(hot, -1, 1), rate, [*band, "-c:a", "aac", "-b:a", "64k"], "adts", "aac")


CONDITIONS: dict[str, Callable[[Audio, int], Audio]] = {
    "opus32": opus32,
    "phone": phone,
    "noise10": noise10,
    "noise10_reverb": noise10_reverb,
    "laptop": laptop,
}
