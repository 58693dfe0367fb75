"""Shared answer for the two ``.../uploads/url`` routes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import HTTPException
from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.api.errors import invalid
from engine.db import lock_member
from engine.models import Upload, UploadKind, UploadStatus
from engine.schemas import UploadUrlResponse
from engine.services import EngineServices
from engine.uploads import UploadError, create_upload


async def check_pending_uploads(
    session: AsyncSession, services: EngineServices, user_id: str
) -> None:
    """429 when the member holds as many unused upload URLs as they may."""
    limit = services.settings.limits.max_pending_uploads
    live = datetime.now(UTC) - timedelta(seconds=services.settings.uploads.url_ttl_seconds)
    unused = await session.scalar(
        select(func.count())
        .select_from(Upload)
        .where(
            Upload.user_id == user_id,
            or_(
                Upload.status == UploadStatus.UPLOADED.value,
                and_(
                    Upload.status.in_([UploadStatus.PENDING.value, UploadStatus.RECEIVING.value]),
                    Upload.created_at > live,
                ),
            ),
        )
    )
    if (unused or 0) >= limit:
        raise HTTPException(
            429,
            f"you have {limit} uploads waiting to be used; use them (clone or train) or let "
            "their URLs expire before asking for more",
            headers={"Retry-After": "60"},
        )


async def issue_upload_url(
    services: EngineServices,
    session: AsyncSession,
    base: str,
    *,
    user_id: str,
    kind: UploadKind,
    name: str,
    file_name: str,
    trigger_word: str | None = None,
) -> UploadUrlResponse:
    # Count and insert as one unit (create_upload commits): simultaneous requests of one
    # member wait their turn, so the cap holds.
    await lock_member(session, user_id)
    try:
        await check_pending_uploads(session, services, user_id)
    except HTTPException:
        await session.rollback()  # release the lock now, not when the session closes
        raise
    try:
        upload = await create_upload(
            session,
            user_id=user_id,
            kind=kind,
            name=name,
            file_name=file_name,
            trigger_word=trigger_word,
        )
    except UploadError as exc:
        await session.rollback()
        invalid("query", exc.field, str(exc))
    limits = services.settings.uploads
    url, expires = services.upload_url(base, upload.id, upload.content_type)
    return UploadUrlResponse(
        id=upload.id,
        upload_id=upload.id,
        name=upload.name,
        file_name=upload.file_name,
        trigger_word=upload.trigger_word,
        status=upload.status,
        upload_url=url,
        url=url,
        headers={"Content-Type": upload.content_type},
        expires_at=datetime.fromtimestamp(expires, UTC),
        max_bytes=limits.max_audio_bytes if kind is UploadKind.VOICE else limits.max_zip_bytes,
    )
