"""Request and response models of the LoRA and demo endpoints (upstream's field names)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field, field_validator
from pydantic.json_schema import JsonDict

from engine.image.types import AspectRatio
from engine.models import JobStatus

# Seeds fit a signed 32-bit column (PostgreSQL's INTEGER).
MAX_SEED = 2**31 - 1
# OpenAPI marker of what the hosted Ta-da API does not have: a client reads our document
# (x-tada-extension: true) to know which controls this API offers.
EXTENSION: JsonDict = {"x-tada-extension": True}
_EXT = "Engine extension (not in the hosted Ta-da API). "


class TrainingStatus(StrEnum):
    """Upstream's (Replicate's) training statuses, mapped from our job states."""

    STARTING = "starting"  # accepted, waiting for a worker
    PROCESSING = "processing"  # a worker is training it
    SUCCEEDED = "succeeded"  # the LoRA is ready for generations
    FAILED = "failed"  # training gave up; `error` says why
    CANCELED = "canceled"  # canceled before it finished

    @classmethod
    def of_job(cls, status: str | None) -> TrainingStatus:
        """The training status of a job status (no job yet reads as starting)."""
        return {
            JobStatus.QUEUED.value: cls.STARTING,
            JobStatus.PROCESSING.value: cls.PROCESSING,
            JobStatus.SUCCEEDED.value: cls.SUCCEEDED,
            JobStatus.FAILED.value: cls.FAILED,
            JobStatus.CANCELED.value: cls.CANCELED,
        }.get(status or "", cls.STARTING)


class LoraTraining(BaseModel):
    """A LoRA training. ``id`` is the LoRA id of the per-LoRA generation paths."""

    id: str
    upload_id: str
    status: TrainingStatus
    created_at: datetime
    updated_at: datetime
    progress: int = Field(description="0-100")
    error: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    name: str
    trigger_word: str
    validation_image_url: str | None = Field(
        None,
        description=_EXT + "Signed URL of the image the LoRA draws at its latest checkpoint "
        "(the validation prompt with the trigger word, one fixed seed); null until the first "
        "checkpoint. It changes as training goes on.",
        json_schema_extra=EXTENSION,
    )
    validation_step: int | None = Field(
        None,
        description=_EXT + "The training step the validation image was drawn at.",
        json_schema_extra=EXTENSION,
    )


class LoraTrainingList(BaseModel):
    """A page of the caller's trainings, newest first."""

    trainings: list[LoraTraining]
    total: int
    limit: int
    offset: int


class GenerateLoraRequest(BaseModel):
    """Body of the generation and demo endpoints.

    ``prompt`` is the hosted contract; the other fields are optional engine extensions.
    """

    prompt: str = Field(min_length=1, max_length=1000)
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description=_EXT + "The noise seed; every answer returns the seed it used, and the "
        "same seed with the same prompt, LoRA and settings draws the same image. "
        "Default: a random one.",
        json_schema_extra=EXTENSION,
    )
    negative_prompt: str | None = Field(
        None,
        max_length=1000,
        description=_EXT + "What the image should not show; put before the enhancer's "
        "default negative terms.",
        json_schema_extra=EXTENSION,
    )
    aspect_ratio: AspectRatio | None = Field(
        None,
        description=_EXT + "Width:height; the size keeps about the base model's native "
        "pixel count (e.g. 16:9 is 1344x768 on SDXL, 704x384 on SD 1.5). Default: the "
        "configured size (square at the native size).",
        json_schema_extra=EXTENSION,
    )
    variation_of: str | None = Field(
        None,
        min_length=1,
        max_length=36,
        description=_EXT + "Id of one of your generations with the same LoRA (or demo) to "
        "vary: its prompt as enhanced, negative prompt and size with a new seed; the answer "
        "records it in `variation_of`. Send its `prompt` and nothing else but this field.",
        json_schema_extra=EXTENSION,
    )

    @field_validator("prompt", "negative_prompt", "variation_of")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        # PostgreSQL's text cannot hold a NUL, and it means nothing to a text encoder (nor
        # in an id: ``variation_of`` is looked up in the database).
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        if value is not None and any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise ValueError("must be valid Unicode (a lone surrogate is not)")
        return value


class VaryStrength(StrEnum):
    """How far a variation of an image may move away from it (img2img strength)."""

    SUBTLE = "subtle"  # the same picture, details redrawn
    STRONG = "strong"  # the same composition and colours, much redrawn


class ImageOperation(StrEnum):
    """What an image made from another image (its ``parent_id``) is."""

    UPSCALE = "upscale"  # twice the size, redrawn lightly at that size
    VARY_SUBTLE = "vary_subtle"  # a subtle variation (same size, new seed)
    VARY_STRONG = "vary_strong"  # a strong variation (same size, new seed)

    @classmethod
    def vary(cls, strength: VaryStrength) -> ImageOperation:
        """The variation of ``strength``."""
        return cls.VARY_SUBTLE if strength is VaryStrength.SUBTLE else cls.VARY_STRONG


class VaryRequest(BaseModel):
    """Body of ``POST /api/images/{image_id}/vary`` (an engine extension)."""

    strength: VaryStrength = Field(
        description=_EXT + "subtle: details change, the picture stays; strong: the "
        "composition and colours stay, much is redrawn.",
        json_schema_extra=EXTENSION,
    )


class LoraGeneration(BaseModel):
    """A generated image: a signed ``url`` and the prompt as enhanced for the model."""

    id: str
    url: str
    prompt: str
    enhanced_prompt: str
    negative_prompt: str
    created_at: datetime
    lora_id: str | None = None
    upload_id: str | None = None
    demo: str | None = None
    seed: int
    width: int
    height: int
    model: str = Field(description="the base model; 'tiny-random ...' draws noise")
    variation_of: str | None = Field(
        None,
        description=_EXT + "The generation this one is a variation of.",
        json_schema_extra=EXTENSION,
    )
    parent_id: str | None = Field(
        None,
        description=_EXT + "The image this one was made from (upscaled or varied); its "
        "prompt, LoRA and base model are this one's.",
        json_schema_extra=EXTENSION,
    )
    operation: ImageOperation | None = Field(
        None,
        description=_EXT + "What was done to the parent image: upscale, vary_subtle, "
        "vary_strong; null for an image drawn from a prompt.",
        json_schema_extra=EXTENSION,
    )
