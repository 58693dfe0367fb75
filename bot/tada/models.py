"""Response models of the Ta-da API.

Field names are upstream's (``tada-openapi-*.json``). Every model ignores fields it does
not know, so a newer server never breaks an older bot; fields that upstream leaves untyped
(register, upload URLs, trainings, LoRA generations, demos) accept the names both upstream
and our engine use, through ``AliasChoices``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr


class TadaModel(BaseModel):
    """Base: unknown fields are ignored, models are immutable."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class TrainingStatus(StrEnum):
    """States of a LoRA training, as upstream (Replicate) names them."""

    STARTING = "starting"  # accepted, waiting for a worker
    PROCESSING = "processing"  # training is running
    SUCCEEDED = "succeeded"  # the LoRA is ready to generate with
    FAILED = "failed"  # ended with an error; see the training's error
    CANCELED = "canceled"  # stopped before it finished


class Registration(TadaModel):
    """A new account. ``api_key`` is shown by the API this once."""

    api_key: SecretStr
    id: str | None = None
    email: str | None = None
    created_at: datetime | None = None
    message: str | None = None


class UploadUrl(TadaModel):
    """Where to PUT a file (a pre-signed URL) and how."""

    upload_id: str = Field(validation_alias=AliasChoices("upload_id", "id"))
    upload_url: str = Field(validation_alias=AliasChoices("upload_url", "url", "signed_url"))
    method: str = "PUT"
    headers: dict[str, str] = Field(default_factory=dict)
    expires_at: datetime | None = None
    max_bytes: int | None = None
    name: str | None = None
    file_name: str | None = None
    status: str | None = None


class UploadReceipt(TadaModel):
    """The storage's answer to a completed PUT (fields vary by storage; all optional)."""

    upload_id: str | None = None
    status: str | None = None
    size_bytes: int | None = None


class VoiceUpload(TadaModel):
    """An uploaded voice sample."""

    id: str
    name: str
    created_at: datetime
    status: str
    file_name: str | None = None
    size_bytes: int | None = None
    error: str | None = None


class Voice(TadaModel):
    """A cloned voice (upstream: ``VoiceClone``)."""

    id: str
    name: str
    created_at: datetime
    upload_id: str | None = None
    status: str | None = None
    duration_seconds: float | None = None
    base_similarity: float | None = None
    # Our engine's calibrated figure (0 = a stranger, 100 = the same person) and its words.
    base_similarity_score: int | None = None
    base_likeness: str | None = None


class VoiceGeneration(TadaModel):
    """Speech generated with a voice."""

    id: str
    voice_id: str
    text: str
    audio_url: str
    created_at: datetime
    similarity: float | None = None
    similarity_score: int | None = None
    likeness: str | None = None
    duration_seconds: float | None = None
    format: str | None = None


class VoiceGenerationList(TadaModel):
    """One page of voice generations."""

    generations: list[VoiceGeneration]
    total: int
    limit: int
    offset: int


class SpokenAudio(TadaModel):
    """Answer to a voice generation request (upstream: ``VoiceGenerationResponse``)."""

    url: str = Field(validation_alias=AliasChoices("url", "audio_url"))
    id: str | None = None
    voice_id: str | None = None
    text: str | None = None
    similarity: float | None = None
    similarity_score: int | None = None
    likeness: str | None = None
    duration_seconds: float | None = None
    format: str | None = None
    created_at: datetime | None = None


class LoraUpload(TadaModel):
    """An uploaded zip of training images; its id is also the LoRA's id."""

    id: str
    name: str
    created_at: datetime
    trigger_word: str | None
    status: str | None = None
    file_name: str | None = None
    size_bytes: int | None = None
    error: str | None = None


class LoraTraining(TadaModel):
    """A LoRA training and where it stands."""

    id: str | None = None
    upload_id: str | None = None
    status: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # Our engine: an integer percentage; elsewhere a fraction (0..1) or a percentage. Kept
    # as sent (an int stays an int): a 1 is then 1%, not "done".
    progress: int | float | None = None
    error: str | None = None
    name: str | None = None
    trigger_word: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    # Self-hosted engine extensions (the hosted API has neither): a signed URL of the image
    # drawn at the latest checkpoint (null before the first) and the step it was drawn at.
    validation_image_url: str | None = None
    validation_step: int | None = None

    @property
    def state(self) -> TrainingStatus | None:
        """``status`` as a known state, or ``None`` for one this client does not know."""
        try:
            return TrainingStatus(self.status) if self.status else None
        except ValueError:
            return None


class ImageGeneration(TadaModel):
    """An image made from a prompt: a LoRA generation or a demo (untyped upstream)."""

    id: str | None = None
    image_url: str | None = Field(
        default=None, validation_alias=AliasChoices("image_url", "url", "output_url")
    )
    prompt: str | None = None
    enhanced_prompt: str | None = None
    status: str | None = None
    lora_id: str | None = Field(default=None, validation_alias=AliasChoices("lora_id", "upload_id"))
    created_at: datetime | None = None
    negative_prompt: str | None = None
    demo: str | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    model: str | None = None
    # Engine extension: the generation this one is a variation of.
    variation_of: str | None = None
    # Engine extensions: the image this one was upscaled or varied from, and which of those
    # ("upscale", "vary_subtle", "vary_strong").
    parent_id: str | None = None
    operation: str | None = None


class TraceMatch(TadaModel):
    """One generation a traced clip was found in (engine extension)."""

    generation_id: str
    voice_id: str
    voice_name: str
    user_id: str | None = None
    created_at: datetime
    score: float
    offset_seconds: float = 0.0
    rate: float = 1.0


class TraceAnswer(TadaModel):
    """``POST /api/trace/speech`` (engine extension): was the clip made here?"""

    made_here: bool
    scope: str
    clip_seconds: float
    searched: int
    matches: list[TraceMatch] = Field(default_factory=list)
    # Whether it carries the Ta-da watermark (null: the engine did not look).
    watermarked: bool | None = None
    watermark_score: float | None = None
