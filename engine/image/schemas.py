"""Request and response models of the LoRA and demo endpoints (upstream's field names)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field, field_validator

from engine.models import JobStatus


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


class LoraTrainingList(BaseModel):
    """A page of the caller's trainings, newest first."""

    trainings: list[LoraTraining]
    total: int
    limit: int
    offset: int


class GenerateLoraRequest(BaseModel):
    """Body of the generation and demo endpoints."""

    prompt: str = Field(min_length=1, max_length=1000)

    @field_validator("prompt")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        # PostgreSQL's text cannot hold a NUL, and it means nothing to a text encoder.
        if "\x00" in value:
            raise ValueError("prompt must not contain NUL characters")
        return value


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
