"""``[engine.image]``: the image back end's settings, validated from ``EngineSettings.image``.

With nothing configured the engine uses the built-in *tiny random* pipeline: a Stable
Diffusion-shaped model built from config with random weights and an offline tokenizer. It
exercises every code path on a CPU in seconds and **draws noise**; set ``base_model`` to a
pulled hub id, a local diffusers folder or a single-file ``.safetensors`` checkpoint (SD 1.5,
SDXL or FLUX.1: the architecture is read from the checkpoint) for real images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.image.untrusted import ImageBounds
from engine.settings import MiB, SettingsError

TINY_MODEL_LABEL = "tiny-random (built-in test model with random weights: it draws noise)"
DEMO_NAMES = ("tadz", "pudgy")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ZipLimits(_Section):
    """What a training zip may hold; checked when it is uploaded and when training starts."""

    min_images: int = Field(4, ge=1, le=1000)
    max_images: int = Field(50, ge=1, le=1000)
    min_side: int = Field(256, ge=1, le=8192, description="smallest accepted width/height")
    max_uncompressed_bytes: int = Field(1024 * MiB, gt=0)
    max_compression_ratio: float = Field(100.0, gt=1)
    max_entries: int = Field(2000, ge=1)
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="pixels one image may declare (width x height)"
    )
    max_set_pixels: int = Field(
        1_000_000_000, ge=1, description="pixels all images of a zip may declare together"
    )
    max_decode_mib: int = Field(
        192, ge=1, description="memory one image may take to decode (estimated from its header)"
    )
    max_frames: int = Field(100, ge=1, description="frames an animated image may have")
    max_aspect_ratio: float = Field(
        8.0, ge=1, description="the long side of an image at most this many times the short one"
    )
    decode_cpu_seconds: int = Field(
        20, ge=1, le=600, description="CPU seconds one image may take to read or decode"
    )

    def image_bounds(self) -> ImageBounds:
        """The per-image bounds, for :mod:`engine.image.untrusted`."""
        return ImageBounds(
            max_pixels=self.max_image_pixels,
            max_decode_bytes=self.max_decode_mib * MiB,
            max_frames=self.max_frames,
            max_aspect=self.max_aspect_ratio,
            cpu_seconds=self.decode_cpu_seconds,
        )

    @model_validator(mode="after")
    def _order(self) -> ZipLimits:
        if self.min_images > self.max_images:
            raise ValueError("image.zip.min_images must not exceed max_images")
        return self


@dataclass(frozen=True)
class ArchDefaults:
    """What one architecture trains and generates with where config leaves a value unset."""

    steps: int
    rank: int
    learning_rate: float
    generation_steps: int
    guidance_scale: float


# Why these (config.example.toml repeats them):
# - sd15: kohya sd-scripts' usual character LoRA: rank 16 at 1e-4 for ~1500 steps (about 30
#   repeats of 50 images); CFG 7 over 30 steps is what SD 1.5 was tuned for.
# - sdxl: the larger UNet holds a subject in rank 32 (kohya's SDXL presets); 1e-4 as diffusers'
#   train_dreambooth_lora_sdxl; SDXL samples well at CFG 7 (diffusers' default 5 is softer).
# - flux: Replicate's / ostris ai-toolkit FLUX.1 LoRA trainer defaults, rank 16 at 4e-4 for
#   1000 steps (the transformer learns a face in a few hundred); 28 steps at distilled
#   guidance 3.5 is FLUX.1 dev's model card. Schnell: 4 steps, no guidance.
ARCH_DEFAULTS: dict[str, ArchDefaults] = {
    "sd15": ArchDefaults(1500, 16, 1e-4, 30, 7.0),
    "sdxl": ArchDefaults(1500, 32, 1e-4, 30, 7.0),
    "flux": ArchDefaults(1000, 16, 4e-4, 28, 3.5),
    "flux-schnell": ArchDefaults(1000, 16, 4e-4, 4, 0.0),
}


class TrainingSettings(_Section):
    """The LoRA training loop (attention projections of the UNet or FLUX's transformer; LoRA
    alpha equals the rank). ``rank``, ``steps`` and ``learning_rate`` unset: the
    architecture's :data:`ARCH_DEFAULTS`."""

    rank: int | None = Field(None, ge=1, le=256)
    steps: int | None = Field(None, ge=1, le=100_000)
    learning_rate: float | None = Field(None, gt=0, le=1)
    resolution: int | None = Field(
        None, ge=8, le=2048, description="default: the base model's native size"
    )
    batch_size: int = Field(1, ge=1, le=64)
    bucketing: bool = Field(
        True,
        description="aspect-ratio buckets (each image keeps its shape); false: square crops",
    )
    seed: int = 0
    report_every: int = Field(1, ge=1, description="write progress every N steps")
    mixed_precision: Literal["auto", "bf16", "no"] = Field(
        "auto",
        description="auto: bf16 autocast on a CUDA GPU that has it, fp32 on CPU; no: never",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, ~30% slower"
    )
    optimizer: Literal["adamw", "adamw8bit"] = Field(
        "adamw", description="adamw8bit: bitsandbytes' 8-bit AdamW (optimizer state in 8 bits)"
    )
    checkpoint_every: int = Field(
        250, ge=0, description="save a resumable checkpoint every N steps; 0: never"
    )
    validation_prompt: str | None = Field(
        "{trigger}, a portrait photo",
        max_length=500,
        description="rendered at each checkpoint ({trigger}: the trigger word); null: none",
    )
    validation_steps: int | None = Field(
        None, ge=1, le=200, description="denoising steps of the validation image"
    )

    def for_arch(self, arch: str) -> ArchDefaults:
        """The values this training uses on ``arch``: config first, then the defaults."""
        base = ARCH_DEFAULTS[arch]
        return ArchDefaults(
            steps=self.steps or base.steps,
            rank=self.rank or base.rank,
            learning_rate=self.learning_rate or base.learning_rate,
            generation_steps=base.generation_steps,
            guidance_scale=base.guidance_scale,
        )


class GenerationSettings(_Section):
    """Image generation defaults."""

    steps: int | None = Field(None, ge=1, le=200, description="default: per architecture")
    guidance_scale: float | None = Field(
        None, ge=0, le=30, description="default: per architecture (FLUX: distilled guidance)"
    )
    width: int | None = Field(None, ge=8, le=2048, description="default: native size")
    height: int | None = Field(None, ge=8, le=2048, description="default: native size")
    output_format: Literal["png", "webp"] = "png"
    lora_weight: float = Field(1.0, ge=0, le=2)
    max_loaded_adapters: int = Field(8, ge=1, le=256)
    # Upscale 2x and Vary (img2img from a generated image): how much of the image is redrawn
    # (0: nothing, 1: all of it), and the largest upscale (width x height) drawn.
    upscale_strength: float = Field(0.3, gt=0, le=1)
    vary_subtle_strength: float = Field(0.4, gt=0, le=1)
    vary_strong_strength: float = Field(0.75, gt=0, le=1)
    max_upscale_pixels: int = Field(
        2048 * 2048, ge=64, description="an upscale larger than this is refused (400)"
    )


class EnhancerSettings(_Section):
    """The prompt enhancer: a deterministic template, or an OpenAI-compatible chat endpoint."""

    backend: Literal["template", "openai"] = "template"
    base_url: str | None = Field(None, description="e.g. http://localhost:11434/v1")
    model: str | None = None
    api_key_env: str | None = Field(None, description="environment variable holding the key")
    timeout_seconds: float = Field(20.0, gt=0, le=600)
    max_words: int = Field(60, ge=10, le=300)
    # Refuse prompts that ask for explicit images (422, before any work). Turn off only
    # for a deployment that serves age-restricted communities alone.
    refuse_explicit: bool = True

    @model_validator(mode="after")
    def _openai_needs_endpoint(self) -> EnhancerSettings:
        if self.backend == "openai" and not (self.base_url and self.model):
            raise ValueError("image.enhancer.backend = 'openai' needs base_url and model")
        return self


class DemoSettings(_Section):
    """One demo model: a LoRA file on the base model and its trigger word."""

    lora_path: Path
    trigger_word: str = Field(min_length=1, max_length=50)
    weight: float = Field(1.0, ge=0, le=2)


class ImageSettings(_Section):
    """Everything the image back end reads; built by :func:`image_settings`."""

    base_model: Path | None = Field(
        None,
        description="diffusers folder or single .safetensors file; None = tiny random model",
    )
    single_file_config: Path | None = Field(
        None,
        description="with a single-file base_model: a diffusers folder of the same "
        "architecture (configs, tokenizers; FLUX: text encoders and VAE)",
    )
    device: str = Field("auto", description="'auto' (cuda when present), 'cpu', 'cuda:0', ...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    cpu_threads: int | None = Field(
        None, ge=1, le=256, description="torch threads on CPU; default 1 for the tiny model"
    )
    tiny_seed: int = Field(1234, description="seed of the tiny random model's weights")
    tiny_resolution: int = Field(32, ge=8, le=256, description="tiny model's native size")
    tiny_arch: Literal["sd15", "sdxl", "flux"] = Field("sd15", description="tiny model's layout")
    zip: ZipLimits = ZipLimits()
    training: TrainingSettings = TrainingSettings()
    generation: GenerationSettings = GenerationSettings()
    enhancer: EnhancerSettings = EnhancerSettings()
    demos: dict[str, DemoSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ImageSettings:
        unknown = set(self.demos) - set(DEMO_NAMES)
        if unknown:
            raise ValueError(f"unknown demo(s) {sorted(unknown)}; known: {list(DEMO_NAMES)}")
        base = self.base_model
        if base is not None and not (
            (base / "model_index.json").is_file()
            or (base.is_file() and base.suffix == ".safetensors")
        ):
            raise ValueError(
                f"image.base_model {base} is neither a diffusers checkpoint folder (with "
                "model_index.json) nor a single-file .safetensors checkpoint; nothing is "
                "downloaded at run time (`tada-engine models pull` fetches one)"
            )
        return self

    @property
    def is_tiny(self) -> bool:
        """True when the built-in random-weight model is in use."""
        return self.base_model is None

    @property
    def model_label(self) -> str:
        """What the outputs were drawn with, shown in API answers and logs."""
        if self.base_model is None:
            if self.tiny_arch == "sd15":
                return TINY_MODEL_LABEL
            return f"{TINY_MODEL_LABEL} [{self.tiny_arch}]"
        return str(self.base_model)


def image_settings(raw: dict[str, Any]) -> ImageSettings:
    """Validate ``EngineSettings.image``; a :class:`SettingsError` says what to change."""
    try:
        return ImageSettings.model_validate(raw)
    except ValueError as exc:
        raise SettingsError(f"invalid [engine.image] settings: {exc}") from exc
