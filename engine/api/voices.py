"""``/api/voices``: voice samples, clones and generations.

Route order matters: the fixed paths (``/uploads``, ``/generations``) are declared before
``/{voice_id}`` so that they are never read as a voice id. Both revisions of the
per-voice generation paths are served by one function: the seed's
``/generations/{voice_id}`` and the latest ``/{voice_id}/generations``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy.ext.asyncio import AsyncSession

from engine.api.deps import BaseUrl, CurrentUser, Services, Session
from engine.api.errors import invalid
from engine.api.jobs import submit_and_wait
from engine.api.upload_urls import issue_upload_url
from engine.jobs import TooManyPendingJobs
from engine.models import JobStatus, UploadKind, UploadStatus, as_utc
from engine.schemas import UploadUrlResponse, VoiceUpload
from engine.services import EngineServices
from engine.uploads import get_owned_upload, list_uploads, mark_upload, receive_direct_upload
from engine.voice import store
from engine.voice.jobs import CLONE_KIND, GENERATE_KIND
from engine.voice.models import Voice
from engine.voice.models import VoiceGeneration as GenerationRow
from engine.voice.schemas import (
    VoiceClone,
    VoiceGeneration,
    VoiceGenerationList,
    VoiceGenerationRequest,
    VoiceGenerationResponse,
)

router = APIRouter(prefix="/api/voices", tags=["voices"])

Limit = Annotated[int, Query(ge=1, le=100, description="Number of generations to return")]
Offset = Annotated[int, Query(ge=0, description="Offset for pagination")]


def _clone(voice: Voice) -> VoiceClone:
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


def _generation(services: EngineServices, base: str, row: GenerationRow) -> VoiceGeneration:
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


def _clean_text(text: str, max_chars: int) -> str:
    value = text.strip()
    if not 1 <= len(value) <= max_chars:
        invalid("body", "text", f"text must be 1-{max_chars} characters after trimming", text)
    if not any(c.isalnum() for c in value):
        invalid("body", "text", "text must contain something to say (letters or digits)", text)
    # The synthesiser takes C strings: a NUL would crash the job on every retry.
    if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
        invalid("body", "text", "text must not contain control characters", text)
    return value


async def _page(
    services: EngineServices,
    session: AsyncSession,
    base: str,
    user_id: str,
    voice_id: str | None,
    limit: int,
    offset: int,
) -> VoiceGenerationList:
    rows, total = await store.page_generations(
        session, user_id, voice_id=voice_id, limit=limit, offset=offset
    )
    return VoiceGenerationList(
        generations=[_generation(services, base, r) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.post("/uploads/url", response_model=UploadUrlResponse)
async def create_voice_upload_url(
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
    name: Annotated[str, Query(max_length=100)],
    file_name: Annotated[str, Query(max_length=255)],
) -> UploadUrlResponse:
    """A pre-signed URL to PUT an audio sample to (wav, mp3, m4a, ogg, flac, webm)."""
    return await issue_upload_url(
        services,
        session,
        base,
        user_id=user.id,
        kind=UploadKind.VOICE,
        name=name,
        file_name=file_name,
    )


@router.get("/uploads", response_model=list[VoiceUpload])
async def list_voice_uploads(user: CurrentUser, session: Session) -> list[VoiceUpload]:
    """The caller's voice samples, newest first."""
    return [
        VoiceUpload.model_validate(u)
        for u in await list_uploads(session, user.id, UploadKind.VOICE)
    ]


@router.post("/uploads", response_model=VoiceClone)
async def create_voice(
    user: CurrentUser,
    services: Services,
    session: Session,
    upload_id: Annotated[str, Query(max_length=64, description="Upload ID")],
) -> VoiceClone:
    """Clone a voice from an uploaded sample (the request waits while it is analysed)."""
    upload = await get_owned_upload(session, user.id, upload_id, UploadKind.VOICE)
    if upload is None:
        raise HTTPException(404, "upload not found")
    if upload.status == UploadStatus.PENDING.value:
        if not services.storage.direct_uploads:
            raise HTTPException(400, "not uploaded: PUT the sample to its upload URL first")
        # The sample went straight to object storage: size, type and the owner's storage
        # are checked now (a refused one is deleted); its sound is judged by the clone.
        await receive_direct_upload(session, services.storage, services.settings, upload)
    if upload.status == UploadStatus.PROCESSED.value:
        raise HTTPException(409, "this upload was already used to clone a voice")
    if upload.status == UploadStatus.FAILED.value:
        raise HTTPException(
            409, f"this sample was refused ({upload.error}); request a new upload URL"
        )
    # Take the upload for this clone atomically: a PUT now gets 409 instead of replacing
    # the bytes being analysed, and a second clone request of the same upload waits its turn.
    if not await mark_upload(
        session, upload.id, UploadStatus.PROCESSING, expect=UploadStatus.UPLOADED
    ):
        raise HTTPException(
            409, "this upload is being received or used by another request; try again shortly"
        )
    try:
        done = await submit_and_wait(
            services,
            session,
            CLONE_KIND,
            {"upload_id": upload.id},
            user.id,
            still_running="still cloning (job {job_id}); the voice will appear in GET /api/voices",
        )
    except TooManyPendingJobs:
        await mark_upload(session, upload.id, UploadStatus.UPLOADED, expect=UploadStatus.PROCESSING)
        raise
    if done.status == JobStatus.SUCCEEDED.value and done.result:
        voice = await store.get_voice(session, user.id, str(done.result["voice_id"]))
        if voice is not None:
            return _clone(voice)
    await session.refresh(upload)
    if upload.status == UploadStatus.FAILED.value:
        raise HTTPException(400, upload.error or "the sample was refused")
    if upload.status == UploadStatus.PROCESSED.value:
        raise HTTPException(409, "this upload was already used to clone a voice")
    # The job failed for another reason: the sample stays usable for another try.
    await mark_upload(session, upload.id, UploadStatus.UPLOADED, expect=UploadStatus.PROCESSING)
    raise HTTPException(500, f"voice cloning failed: {done.error or done.status}")


@router.get("/generations", response_model=VoiceGenerationList)
async def list_all_generations(
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
    limit: Limit = 20,
    offset: Offset = 0,
) -> VoiceGenerationList:
    """The caller's generations in every voice, newest first."""
    return await _page(services, session, base, user.id, None, limit, offset)


@router.get(
    "/generations/{generation_id}",
    response_model=VoiceGeneration | VoiceGenerationList,
)
async def get_generation_or_voice_list(
    generation_id: str,
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
    limit: Limit = 20,
    offset: Offset = 0,
) -> VoiceGeneration | VoiceGenerationList:
    """One generation by its id; with a voice's id, that voice's generations (seed's path)."""
    row = await store.get_generation(session, user.id, generation_id)
    if row is not None:
        return _generation(services, base, row)
    if await store.get_voice(session, user.id, generation_id) is not None:
        return await _page(services, session, base, user.id, generation_id, limit, offset)
    raise HTTPException(404, "generation not found")


@router.get("", response_model=list[VoiceClone])
async def list_voices(user: CurrentUser, session: Session) -> list[VoiceClone]:
    """The caller's cloned voices, newest first."""
    return [_clone(v) for v in await store.list_voices(session, user.id)]


@router.get("/{voice_id}", response_model=VoiceClone)
async def get_voice(voice_id: str, user: CurrentUser, session: Session) -> VoiceClone:
    """One of the caller's voices."""
    voice = await store.get_voice(session, user.id, voice_id)
    if voice is None:
        raise HTTPException(404, "voice not found")
    return _clone(voice)


@router.get("/{voice_id}/generations", response_model=VoiceGenerationList)
async def list_voice_generations(
    voice_id: str,
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
    limit: Limit = 20,
    offset: Offset = 0,
) -> VoiceGenerationList:
    """The generations of one of the caller's voices, newest first."""
    if await store.get_voice(session, user.id, voice_id) is None:
        raise HTTPException(404, "voice not found")
    return await _page(services, session, base, user.id, voice_id, limit, offset)


@router.post("/{voice_id}/generations", response_model=VoiceGenerationResponse)
@router.post("/generations/{voice_id}", response_model=VoiceGenerationResponse)
async def generate(
    voice_id: str,
    body: VoiceGenerationRequest,
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
) -> VoiceGenerationResponse:
    """Speak ``text`` in the voice (the request waits for the audio)."""
    text = _clean_text(body.text, services.settings.limits.max_speech_chars)
    if await store.get_voice(session, user.id, voice_id) is None:
        raise HTTPException(404, "voice not found")
    done = await submit_and_wait(
        services,
        session,
        GENERATE_KIND,
        {"voice_id": voice_id, "text": text},
        user.id,
        still_running=(
            "still generating (job {job_id}); it will appear in GET /api/voices/generations"
        ),
    )
    if done.status != JobStatus.SUCCEEDED.value or not done.result:
        raise HTTPException(500, f"generation failed: {done.error or done.status}")
    row = await store.get_generation(session, user.id, str(done.result["generation_id"]))
    if row is None:  # pragma: no cover - the handler commits the row before succeeding
        raise HTTPException(500, "generation finished but its record is missing")
    generation = _generation(services, base, row)
    return VoiceGenerationResponse(url=generation.audio_url, **generation.model_dump())
