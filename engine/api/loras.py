"""``/api/loras``: image zips, trainings and generations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from engine.api.deps import BaseUrl, CurrentUser, Services, Session
from engine.api.upload_urls import issue_upload_url
from engine.models import UploadKind, as_utc
from engine.schemas import LoraUpload, UploadUrlResponse
from engine.uploads import list_uploads

router = APIRouter(prefix="/api/loras", tags=["loras"])


@router.post("/uploads/url", response_model=UploadUrlResponse)
async def create_upload_url(
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
    name: Annotated[str, Query(max_length=100)],
    trigger_word: Annotated[str, Query(max_length=50)],
    file_name: Annotated[str, Query(max_length=255)],
) -> UploadUrlResponse:
    """A pre-signed URL to PUT a zip of training images to."""
    return await issue_upload_url(
        services,
        session,
        base,
        user_id=user.id,
        kind=UploadKind.LORA,
        name=name,
        file_name=file_name,
        trigger_word=trigger_word,
    )


@router.get("/uploads", response_model=list[LoraUpload])
async def list_lora_uploads(user: CurrentUser, session: Session) -> list[LoraUpload]:
    """The caller's image zips, newest first."""
    return [
        LoraUpload(
            id=u.id,
            name=u.name,
            created_at=as_utc(u.created_at),
            trigger_word=u.trigger_word,
            status=u.status,
            file_name=u.file_name,
            size_bytes=u.size_bytes,
            error=u.error,
        )
        for u in await list_uploads(session, user.id, UploadKind.LORA)
    ]
