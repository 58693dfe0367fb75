"""``/storage``: the targets of pre-signed URLs (PUT uploads, GET artifacts)."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse

from engine.api.deps import Services, Session
from engine.image.service import settings_of
from engine.image.zipcheck import zip_problems
from engine.models import Upload, UploadKind, UploadStatus, utcnow
from engine.schemas import StoredFile
from engine.security import SignatureError
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

    A LoRA zip is checked before it is kept: one that training could not use is 400 with
    every problem listed, and the upload stays as it was (a fixed zip can be PUT again).
    """
    try:
        services.signer.verify("PUT", f"upload:{upload_id}", expires, signature)
    except SignatureError as exc:
        raise HTTPException(403, f"upload URL refused: {exc}") from exc
    upload = await session.get(Upload, upload_id)
    if upload is None:
        raise HTTPException(404, "upload not found")
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
    check: Check | None = None
    if upload.kind == UploadKind.LORA.value:
        check = partial(zip_problems, limits=settings_of(services).zip)
    try:
        size = await services.storage.write_stream(
            services.storage.upload_path(upload.id), request.stream(), cap, check
        )
    except TooLarge as exc:
        raise HTTPException(
            413, f"file is larger than the {cap // (1024 * 1024)} MB limit"
        ) from exc
    except Refused as exc:
        # Kept on the row so that the uploads list says why; the status is unchanged.
        upload.error = str(exc)
        upload.updated_at = utcnow()
        await session.commit()
        raise HTTPException(400, str(exc)) from exc
    upload.status = UploadStatus.UPLOADED.value
    upload.size_bytes = size
    upload.error = None
    upload.updated_at = utcnow()
    await session.commit()
    return StoredFile(upload_id=upload.id, status=upload.status, size_bytes=size)


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
