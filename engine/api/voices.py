"""``/api/voices``: voice samples, clones and generations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from engine.api.deps import BaseUrl, CurrentUser, Services, Session
from engine.api.upload_urls import issue_upload_url
from engine.models import UploadKind, as_utc
from engine.schemas import UploadUrlResponse, VoiceUpload
from engine.uploads import list_uploads

router = APIRouter(prefix="/api/voices", tags=["voices"])


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
        VoiceUpload(
            id=u.id,
            name=u.name,
            created_at=as_utc(u.created_at),
            status=u.status,
            file_name=u.file_name,
            size_bytes=u.size_bytes,
            error=u.error,
        )
        for u in await list_uploads(session, user.id, UploadKind.VOICE)
    ]
