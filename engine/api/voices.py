"""``/api/voices``: voice samples, clones and generations (HTTP only; the logic is in
:mod:`engine.voice.service`).

Route order matters: the fixed paths (``/uploads``, ``/generations``) are declared before
``/{voice_id}`` so that they are never read as a voice id. Both revisions of the
per-voice generation paths are served by one function: the seed's
``/generations/{voice_id}`` and the latest ``/{voice_id}/generations``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from engine.api.deps import BaseUrl, CurrentUser, Services, Session
from engine.api.upload_urls import issue_upload_url
from engine.models import UploadKind
from engine.schemas import MAX_OFFSET, UploadUrlResponse, VoiceUpload
from engine.uploads import list_uploads
from engine.voice import service, store, streaming
from engine.voice.schemas import (
    VoiceClone,
    VoiceGeneration,
    VoiceGenerationList,
    VoiceGenerationRequest,
    VoiceGenerationResponse,
)

# The member's locale as ``Accept-Language``: the hint to the text's language.
LocaleHint = Annotated[
    str | None,
    Header(
        description="The member's locale (e.g. de, pt-BR): a hint to the detection of "
        "the text's language; a text in a language the voice does not speak answers 400",
    ),
]

router = APIRouter(prefix="/api/voices", tags=["voices"])

Limit = Annotated[int, Query(ge=1, le=100, description="Number of generations to return")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Offset for pagination")]


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
    return await service.create_voice(services, session, user.id, upload_id)


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
    return await service.page(services, session, base, user.id, None, limit, offset)


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
    return await service.generation_or_voice_page(
        services, session, base, user.id, generation_id, limit, offset
    )


@router.get("", response_model=list[VoiceClone])
async def list_voices(user: CurrentUser, session: Session) -> list[VoiceClone]:
    """The caller's cloned voices, newest first."""
    return [service.clone_view(v) for v in await store.list_voices(session, user.id)]


@router.get("/{voice_id}", response_model=VoiceClone)
async def get_voice(voice_id: str, user: CurrentUser, session: Session) -> VoiceClone:
    """One of the caller's voices."""
    return service.clone_view(await service.owned_voice(session, user.id, voice_id))


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
    await service.owned_voice(session, user.id, voice_id)
    return await service.page(services, session, base, user.id, voice_id, limit, offset)


@router.post("/{voice_id}/generations", response_model=VoiceGenerationResponse)
@router.post("/generations/{voice_id}", response_model=VoiceGenerationResponse)
async def generate(
    voice_id: str,
    body: VoiceGenerationRequest,
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
    accept_language: LocaleHint = None,
) -> VoiceGenerationResponse:
    """Speak ``text`` in the voice (the request waits for the audio)."""
    return await service.speak(
        services, session, base, user.id, voice_id, body.text, accept_language
    )


@router.post(
    "/{voice_id}/speech/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "16-bit mono WAV of open length, sent piece by piece as it is made",
            "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
            "headers": {
                "X-Generation-Id": {
                    "description": "The generation it records (GET /api/voices/generations/"
                    "{id} once the stream ends: its stored file and similarity)",
                    "schema": {"type": "string"},
                },
            },
        }
    },
    description=(
        "Engine extension (not in the hosted Ta-da API). Speak ``text`` in the voice and "
        "send the audio while it is made, sentence by sentence: the answer starts with the "
        "first piece. The same checks, limits and job cap as POST /api/voices/{voice_id}/"
        "generations; the whole speech is recorded as a generation like any other."
    ),
)
async def stream_speech(
    voice_id: str,
    body: VoiceGenerationRequest,
    user: CurrentUser,
    services: Services,
    session: Session,
    accept_language: LocaleHint = None,
) -> StreamingResponse:
    """Speak ``text`` in the voice, streamed (engine extension)."""
    speech = await streaming.open_stream(
        services, session, user.id, voice_id, body.text, accept_language
    )
    return StreamingResponse(
        speech.body(),
        media_type="audio/wav",
        headers={"X-Generation-Id": speech.generation_id, "Cache-Control": "no-store"},
    )
