"""What a job is: its kind, its state, and the frozen view of its row the runner works with."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from bot.store.models import JobRow
from bot.tada.models import SpokenAudio, VoiceGeneration


def aware(moment: datetime) -> datetime:
    """A datetime with its zone: SQLite gives naive ones back, which are UTC here."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class JobKind(StrEnum):
    """The Ta-da work a job does."""

    VOICE_SPEAK = "voice_speak"  # speak a text with a cloned voice
    LORA_TRAIN = "lora_train"  # start a training, then watch it to the end
    LORA_GENERATE = "lora_generate"  # one image from a trained LoRA
    DEMO_GENERATE = "demo_generate"  # one image from a demo model (tadz, pudgy)

    @property
    def label(self) -> str:
        """The kind in a list of jobs (``/jobs``): "Speech", "LoRA training"."""
        return _KIND_NAMES[self][0]

    @property
    def yours(self) -> str:
        """The kind as the subject of a message to its requester: "Your speech"."""
        return _KIND_NAMES[self][1]


# How messages name each kind, in one table: (label, yours).
_KIND_NAMES: dict[JobKind, tuple[str, str]] = {
    JobKind.VOICE_SPEAK: ("Speech", "Your speech"),
    JobKind.LORA_TRAIN: ("LoRA training", "Your training"),
    JobKind.LORA_GENERATE: ("Image", "Your image"),
    JobKind.DEMO_GENERATE: ("Demo image", "Your demo image"),
}


class JobState(StrEnum):
    """Where a job stands; a job accepted ends FINISHED, FAILED or INTERRUPTED, posted."""

    QUEUED = "queued"  # saved, waiting for a slot; no Ta-da call made yet
    RUNNING = "running"  # a Ta-da call is in flight, or a training is being watched
    FINISHED = "finished"  # Ta-da answered; ``result`` holds what to post
    FAILED = "failed"  # Ta-da refused or failed; ``error`` says why (member-facing)
    INTERRUPTED = "interrupted"  # a restart cut a generation off; posted with a retry button


FINAL_STATES = frozenset({JobState.FINISHED, JobState.FAILED, JobState.INTERRUPTED})


class Destination(StrEnum):
    """Where a result was posted."""

    INTERACTION = "interaction"  # a follow-up of the member's interaction (token valid)
    CHANNEL = "channel"  # a new message in the channel the request came from
    DM = "dm"  # a direct message, when the channel is gone or forbidden


@dataclass(frozen=True, slots=True)
class Job:
    """A job row as the runner sees it (params and result decoded)."""

    id: str
    user_id: int
    guild_id: int | None
    channel_id: int | None
    kind: JobKind
    state: JobState
    params: dict[str, Any]
    tada_id: str | None
    result: dict[str, Any] | None
    error: str | None
    private: bool
    has_shared_key: bool
    progress_message_id: int | None
    result_message_id: int | None
    posted_via: Destination | None
    created_at: datetime
    started_at: datetime | None

    @classmethod
    def of(cls, row: JobRow) -> Job:
        """The view of ``row``."""
        return cls(
            id=row.id,
            user_id=row.discord_user_id,
            guild_id=row.guild_id,
            channel_id=row.channel_id,
            kind=JobKind(row.kind),
            state=JobState(row.state),
            params=json.loads(row.params),
            tada_id=row.tada_id,
            result=json.loads(row.result) if row.result else None,
            error=row.error,
            private=row.private,
            has_shared_key=row.shared_key_encrypted is not None,
            progress_message_id=row.progress_message_id,
            result_message_id=row.result_message_id,
            posted_via=Destination(row.posted_via) if row.posted_via else None,
            created_at=aware(row.created_at),
            started_at=aware(row.started_at) if row.started_at else None,
        )

    @property
    def posted(self) -> bool:
        """Whether the result (or failure) reached the member."""
        return self.result_message_id is not None or self.posted_via is not None


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What a member asks for: the job's kind and parameters, and what the gate sees."""

    kind: JobKind
    params: dict[str, Any] = field(default_factory=dict)
    text: str | None = None

    @property
    def cost(self) -> int:
        """Quota cost: characters for speech, one for everything else."""
        return max(1, len(self.text or "")) if self.kind is JobKind.VOICE_SPEAK else 1


def speech_result(speech: SpokenAudio | VoiceGeneration) -> dict[str, Any]:
    """A speech job's result row, from Ta-da's answer or from its listing (a lost answer
    found again): the same keys either way."""
    return {
        "generation_id": speech.id,
        "url": speech.url if isinstance(speech, SpokenAudio) else speech.audio_url,
        "similarity": speech.similarity,
        "similarity_score": speech.similarity_score,
        "likeness": speech.likeness,
        "duration_seconds": speech.duration_seconds,
        "format": speech.format,
    }
