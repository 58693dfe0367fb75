"""Request and response models of ``/api/voices`` (field names follow upstream's contract)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, computed_field

from engine.voice.similarity import RESEMBLYZER, Likeness, likeness

# Every back end's similarity is resemblyzer's cosine to the sample (engine.voice.backend).
_CALIBRATION = RESEMBLYZER


def _words(percent: int | None) -> Likeness | None:
    return None if percent is None else likeness(percent)


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

    @computed_field(  # type: ignore[prop-decorator]
        description=(
            "base_similarity calibrated: 0 = where a different speaker typically scores, "
            "100 = where a second recording of the same speaker does"
        )
    )
    @property
    def base_similarity_score(self) -> int | None:
        return _CALIBRATION.percent(self.base_similarity)

    @computed_field(description="base_similarity_score in words")  # type: ignore[prop-decorator]
    @property
    def base_likeness(self) -> Likeness | None:
        return _words(self.base_similarity_score)


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

    @computed_field(  # type: ignore[prop-decorator]
        description=(
            "similarity calibrated: 0 = where a different speaker typically scores, "
            "100 = where a second recording of the same speaker does"
        )
    )
    @property
    def similarity_score(self) -> int | None:
        return _CALIBRATION.percent(self.similarity)

    @computed_field(description="similarity_score in words")  # type: ignore[prop-decorator]
    @property
    def likeness(self) -> Likeness | None:
        return _words(self.similarity_score)


class VoiceGenerationResponse(VoiceGeneration):
    """Upstream answers ``{"url": ...}``; we add the generation's fields beside it."""

    url: str


class VoiceGenerationList(BaseModel):
    """A page of generations, newest first."""

    generations: list[VoiceGeneration]
    total: int
    limit: int
    offset: int
