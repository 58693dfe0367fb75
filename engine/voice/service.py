"""The API side of voices: clones and generations as the routers need them.

Async code only: the models run in the job worker (:mod:`engine.voice.handlers`). Errors
are :mod:`engine.errors` with a ``detail`` a member can act on (``engine/api/errors.py``
maps them to HTTP); another user's ids read as absent. The composition root is reached only
through :class:`VoiceServices`, the part of it this module uses.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from engine.errors import Conflict, InvalidField, JobOutcomeError, NotFound, Rejected
from engine.jobs import JobService, TooManyPendingJobs, submit_and_wait
from engine.models import JobStatus, UploadKind, UploadStatus, as_utc
from engine.uploads import get_owned_upload, mark_upload, receive_direct_upload
from engine.voice import store
from engine.voice.handlers import CLONE_KIND, GENERATE_KIND, VoiceHandlers
from engine.voice.models import Voice
from engine.voice.models import VoiceGeneration as GenerationRow
from engine.voice.schemas import (
    VoiceClone,
    VoiceGeneration,
    VoiceGenerationList,
    VoiceGenerationResponse,
)

if TYPE_CHECKING:
    from engine.settings import EngineSettings
    from engine.storage import Storage


class VoiceServices(Protocol):
    """What this module uses of the composition root (``engine.services.EngineServices``)."""

    @property
    def settings(self) -> EngineSettings: ...

    @property
    def jobs(self) -> JobService: ...

    @property
    def storage(self) -> Storage: ...

    @property
    def voice(self) -> VoiceHandlers: ...

    def artifact_url(self, base_url: str, key: str) -> str:
        """A signed, expiring GET URL for a stored artifact."""
        ...


def clone_view(voice: Voice) -> VoiceClone:
    """A voice row as the API shows it."""
    return VoiceClone(
        id=voice.id,
        name=voice.name,
        created_at=as_utc(voice.created_at),
        upload_id=voice.upload_id,
        duration_seconds=voice.sample_seconds,
        speech_seconds=voice.speech_seconds,
        median_f0_hz=voice.median_f0_hz,
        base_similarity=voice.base_similarity,
        backend=voice.backend,
    )


def generation_view(services: VoiceServices, base: str, row: GenerationRow) -> VoiceGeneration:
    """A generation row as the API shows it, with a fresh signed URL."""
    return VoiceGeneration(
        id=row.id,
        voice_id=row.voice_id,
        text=row.text,
        audio_url=services.artifact_url(base, row.audio_key),
        created_at=as_utc(row.created_at),
        duration_seconds=row.duration_seconds,
        format=row.audio_format,
        similarity=row.similarity,
    )


def clean_text(text: str, max_chars: int) -> str:
    """The text to speak, trimmed; :class:`InvalidField` when it cannot be spoken."""
    value = text.strip()
    if not 1 <= len(value) <= max_chars:
        raise InvalidField(
            "body", "text", f"text must be 1-{max_chars} characters after trimming", text
        )
    if not any(c.isalnum() for c in value):
        raise InvalidField(
            "body", "text", "text must contain something to say (letters or digits)", text
        )
    # The synthesiser takes C strings: a NUL would crash the job on every retry.
    if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
        raise InvalidField("body", "text", "text must not contain control characters", text)
    # The guard refuses lone surrogates at the door; text from any other way in is held too.
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InvalidField("body", "text", "text must be valid Unicode", None)
    return value


async def owned_voice(session: AsyncSession, user_id: str, voice_id: str) -> Voice:
    """The caller's voice; :class:`NotFound` otherwise."""
    voice = await store.get_voice(session, user_id, voice_id)
    if voice is None:
        raise NotFound("voice not found")
    return voice


async def page(
    services: VoiceServices,
    session: AsyncSession,
    base: str,
    user_id: str,
    voice_id: str | None,
    limit: int,
    offset: int,
) -> VoiceGenerationList:
    """A page of the caller's generations (one voice's when ``voice_id`` is given)."""
    rows, total = await store.page_generations(
        session, user_id, voice_id=voice_id, limit=limit, offset=offset
    )
    return VoiceGenerationList(
        generations=[generation_view(services, base, r) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


async def generation_or_voice_page(
    services: VoiceServices,
    session: AsyncSession,
    base: str,
    user_id: str,
    generation_id: str,
    limit: int,
    offset: int,
) -> VoiceGeneration | VoiceGenerationList:
    """One generation by its id; with a voice's id, that voice's generations (seed's path)."""
    row = await store.get_generation(session, user_id, generation_id)
    if row is not None:
        return generation_view(services, base, row)
    if await store.get_voice(session, user_id, generation_id) is not None:
        return await page(services, session, base, user_id, generation_id, limit, offset)
    raise NotFound("generation not found")


async def create_voice(
    services: VoiceServices, session: AsyncSession, user_id: str, upload_id: str
) -> VoiceClone:
    """Clone a voice from an uploaded sample; waits for the clone job (the contract is
    synchronous)."""
    upload = await get_owned_upload(session, user_id, upload_id, UploadKind.VOICE)
    if upload is None:
        raise NotFound("upload not found")
    if upload.status == UploadStatus.PENDING.value:
        if not services.storage.direct_uploads:
            raise Rejected("not uploaded: PUT the sample to its upload URL first")
        # The sample went straight to object storage: size, type and the owner's storage
        # are checked now (a refused one is deleted); its sound is judged by the clone.
        await receive_direct_upload(session, services.storage, services.settings, upload)
    if upload.status == UploadStatus.PROCESSED.value:
        raise Conflict("this upload was already used to clone a voice")
    if upload.status == UploadStatus.FAILED.value:
        raise Conflict(f"this sample was refused ({upload.error}); request a new upload URL")
    # Take the upload for this clone atomically: a PUT now gets 409 instead of replacing
    # the bytes being analysed, and a second clone request of the same upload waits its turn.
    if not await mark_upload(
        session, upload.id, UploadStatus.PROCESSING, expect=UploadStatus.UPLOADED
    ):
        raise Conflict(
            "this upload is being received or used by another request; try again shortly"
        )
    try:
        done = await submit_and_wait(
            services.jobs,
            session,
            CLONE_KIND,
            {"upload_id": upload.id},
            user_id,
            within=services.settings.jobs.wait_timeout_seconds,
            still_running="still cloning (job {job_id}); the voice will appear in GET /api/voices",
        )
    except TooManyPendingJobs:
        await mark_upload(session, upload.id, UploadStatus.UPLOADED, expect=UploadStatus.PROCESSING)
        raise
    if done.status == JobStatus.SUCCEEDED.value and done.result:
        voice = await store.get_voice(session, user_id, str(done.result["voice_id"]))
        if voice is not None:
            return clone_view(voice)
    await session.refresh(upload)
    if upload.status == UploadStatus.FAILED.value:
        raise Rejected(upload.error or "the sample was refused")
    if upload.status == UploadStatus.PROCESSED.value:
        raise Conflict("this upload was already used to clone a voice")
    # The job failed for another reason: the sample stays usable for another try.
    await mark_upload(session, upload.id, UploadStatus.UPLOADED, expect=UploadStatus.PROCESSING)
    raise JobOutcomeError(f"voice cloning failed: {done.error or done.status}")


async def check_language(services: VoiceServices, text: str, locale: str | None) -> None:
    """Refuse (:class:`Rejected`, saying so) a text in a language the back end does not
    speak; ``locale`` (the member's, e.g. ``Accept-Language``) is a hint to the detection."""
    # Off the event loop: the detector's models load on first use (a few seconds).
    verdict = await asyncio.to_thread(services.voice.languages.judge, text, locale)
    if not verdict.spoken:
        raise Rejected(verdict.reason or "this voice does not speak the text's language")


async def speak(
    services: VoiceServices,
    session: AsyncSession,
    base: str,
    user_id: str,
    voice_id: str,
    text: str,
    locale: str | None = None,
) -> VoiceGenerationResponse:
    """Speak ``text`` in the caller's voice; waits for the audio (the contract is synchronous).

    A text in a language the back end does not speak is refused (:class:`Rejected`, saying
    so); ``locale`` (the member's, e.g. ``Accept-Language``) is a hint to the detection.
    """
    text = clean_text(text, services.settings.limits.max_speech_chars)
    await owned_voice(session, user_id, voice_id)
    await check_language(services, text, locale)
    done = await submit_and_wait(
        services.jobs,
        session,
        GENERATE_KIND,
        {"voice_id": voice_id, "text": text},
        user_id,
        within=services.settings.jobs.wait_timeout_seconds,
        still_running=(
            "still generating (job {job_id}); it will appear in GET /api/voices/generations"
        ),
    )
    if done.status != JobStatus.SUCCEEDED.value or not done.result:
        raise JobOutcomeError(f"generation failed: {done.error or done.status}")
    row = await store.get_generation(session, user_id, str(done.result["generation_id"]))
    if row is None:  # pragma: no cover - the handler commits the row before succeeding
        raise JobOutcomeError("generation finished but its record is missing")
    generation = generation_view(services, base, row)
    return VoiceGenerationResponse(url=generation.audio_url, **generation.model_dump())
