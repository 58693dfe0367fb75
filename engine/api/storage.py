"""``/storage``: the targets of pre-signed URLs (PUT uploads, GET artifacts)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from engine.api.deps import Services, Session
from engine.image.service import settings_of
from engine.image.zipcheck import InspectingCheck
from engine.models import Upload, UploadKind, UploadStatus, utcnow
from engine.schemas import StoredFile
from engine.security import SignatureError
from engine.services import EngineServices
from engine.storage import Check, Refused, TooLarge
from engine.uploads import content_type_matches

router = APIRouter(prefix="/storage", tags=["storage"])

Expires = Annotated[int, Query()]
Signature = Annotated[str, Query(max_length=128)]


@router.put("/uploads/{upload_id}", response_model=StoredFile)
async def put_upload(
    upload_id: str,
    request: Request,
    services: Services,
    session: Session,
    expires: Expires,
    signature: Signature,
) -> StoredFile:
    """Receive the bytes of an upload through its pre-signed URL.

    A LoRA zip is inspected before it is kept, once: one that training could not use is 400
    with every problem listed, and the upload stays as it was (a fixed zip can be PUT again);
    the report of one kept is kept with it, for training to use.
    """
    try:
        services.signer.verify("PUT", f"upload:{upload_id}", expires, signature)
    except SignatureError as exc:
        raise HTTPException(403, f"upload URL refused: {exc}") from exc
    upload = await session.get(Upload, upload_id)
    if upload is None:
        raise HTTPException(404, "upload not found")
    if upload.status == UploadStatus.RECEIVING.value:
        raise HTTPException(
            409,
            "another PUT to this upload URL is in progress; wait for it, or request a new "
            "upload URL if it was interrupted",
        )
    if upload.status not in (UploadStatus.PENDING.value, UploadStatus.UPLOADED.value):
        raise HTTPException(409, f"upload is already {upload.status}; request a new upload URL")
    sent_type = request.headers.get("content-type")
    if not content_type_matches(upload.content_type, sent_type):
        raise HTTPException(
            415, f"send Content-Type: {upload.content_type} (got {sent_type or 'none'})"
        )
    limits = services.settings.uploads
    cap = limits.max_audio_bytes if upload.kind == UploadKind.VOICE.value else limits.max_zip_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise HTTPException(413, f"file is larger than the {cap // (1024 * 1024)} MB limit")
    room = await storage_left(session, services, upload)
    if room <= 0 or (declared and declared.isdigit() and int(declared) > room):
        raise HTTPException(413, _storage_full(services))
    check: Check | None = None
    inspection: InspectingCheck | None = None
    if upload.kind == UploadKind.LORA.value:
        check = inspection = InspectingCheck(settings_of(services).zip)
    previous = upload.status
    # One body per upload: claim it atomically, so that a concurrent PUT (or a use of the
    # upload) sees RECEIVING and is refused instead of replacing bytes under us.
    if not await _move(session, upload.id, previous, UploadStatus.RECEIVING.value):
        raise HTTPException(409, "another PUT to this upload URL is in progress")
    try:
        size = await services.storage.write_stream(
            services.storage.upload_path(upload.id),
            request.stream(),
            min(cap, room),
            check,
        )
    except TooLarge as exc:
        await _move(session, upload.id, UploadStatus.RECEIVING.value, previous)
        if room < cap:
            raise HTTPException(413, _storage_full(services)) from exc
        raise HTTPException(
            413, f"file is larger than the {cap // (1024 * 1024)} MB limit"
        ) from exc
    except Refused as exc:
        # Kept on the row so that the uploads list says why; the status is unchanged.
        await _move(session, upload.id, UploadStatus.RECEIVING.value, previous, error=str(exc))
        raise HTTPException(400, str(exc)) from exc
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _move(session, upload.id, UploadStatus.RECEIVING.value, previous)
        raise
    kept = inspection.kept if inspection is not None else None
    await _move(
        session,
        upload.id,
        UploadStatus.RECEIVING.value,
        UploadStatus.UPLOADED.value,
        size=size,
        inspection=kept.to_json() if kept is not None else None,
    )
    return StoredFile(upload_id=upload.id, status=UploadStatus.UPLOADED.value, size_bytes=size)


async def _move(
    session: AsyncSession,
    upload_id: str,
    frm: str,
    to: str,
    *,
    error: str | None = None,
    size: int | None = None,
    inspection: dict[str, Any] | None = None,
) -> bool:
    """Atomically move an upload from status ``frm`` to ``to``; False if it was not ``frm``.

    New bytes (``size``) replace the kept inspection: with theirs, or with none.
    """
    values: dict[str, object] = {"status": to, "error": error, "updated_at": utcnow()}
    if size is not None:
        values["size_bytes"] = size
        values["inspection"] = inspection
    res = await session.execute(
        update(Upload).where(Upload.id == upload_id, Upload.status == frm).values(**values)
    )
    await session.commit()
    return bool(res.rowcount)  # type: ignore[attr-defined]


async def storage_left(session: AsyncSession, services: EngineServices, upload: Upload) -> int:
    """Bytes the owner of ``upload`` may still keep (this upload's old bytes are replaced)."""
    used = await session.scalar(
        select(func.coalesce(func.sum(Upload.size_bytes), 0)).where(
            Upload.user_id == upload.user_id, Upload.id != upload.id
        )
    )
    return services.settings.limits.max_stored_bytes_per_user - int(used or 0)


def _storage_full(services: EngineServices) -> str:
    total = services.settings.limits.max_stored_bytes_per_user
    return (
        f"this file would take your uploads past your storage limit ({total // (1024 * 1024)} MB)"
    )


@router.get("/artifacts/{key:path}", response_class=FileResponse)
async def get_artifact(
    key: str, services: Services, expires: Expires, signature: Signature
) -> FileResponse:
    """Serve a generated artifact through its signed, expiring URL."""
    try:
        services.signer.verify("GET", f"artifact:{key}", expires, signature)
    except SignatureError as exc:
        raise HTTPException(403, f"artifact URL refused: {exc}") from exc
    try:
        path = services.storage.artifact_path(key)
    except ValueError as exc:
        raise HTTPException(404, "artifact not found") from exc
    if not path.is_file():
        raise HTTPException(404, "artifact not found")
    return FileResponse(path, filename=path.name)
