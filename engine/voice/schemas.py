"""Request and response models of ``/api/voices`` (field names follow upstream's contract)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class VoiceClone(BaseModel):
    """A cloned voice. ``id``, ``name``, ``created_at`` are upstream's; the rest is ours."""

    id: str
    name: str
    created_at: datetime
    upload_id: str | None = Field(description="the sample this voice was cloned from")
    duration_seconds: float = Field(description="length of the sample")
    speech_seconds: float = Field(description="how much of the sample had sound in it")
    median_f0_hz: float = Field(description="the speaker's median pitch")
    base_similarity: float | None = Field(
        description="resemblyzer cosine of the unconverted base voice to the sample"
    )
    backend: str


class VoiceGenerationRequest(BaseModel):
    """The text to speak (1 to `limits.max_speech_chars` characters after trimming)."""

    text: str


class VoiceGeneration(BaseModel):
    """One generated utterance; ``audio_url`` is signed and expires."""

    id: str
    voice_id: str
    text: str
    audio_url: str
    created_at: datetime
    duration_seconds: float
    format: str
    similarity: float | None = Field(
        description="resemblyzer cosine of this speech to the voice's sample (1.0 = same voice)"
    )


class VoiceGenerationResponse(VoiceGeneration):
    """Upstream answers ``{"url": ...}``; we add the generation's fields beside it."""

    url: str


class VoiceGenerationList(BaseModel):
    """A page of generations, newest first."""

    generations: list[VoiceGeneration]
    total: int
    limit: int
    offset: int
