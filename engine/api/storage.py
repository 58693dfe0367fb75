"""``/storage``: the targets of the engine's own pre-signed URLs (PUT uploads, GET artifacts).

With object storage (``[engine.storage] backend = "s3"``) clients PUT to and GET from the
store itself; here an upload PUT is then refused, and an artifact GET (an URL signed
before the switch) is redirected to the store's pre-signed URL.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from engine.api.deps import Services, Session
from engine.db import lock_member
from engine.image.service import settings_of
from engine.image.zipcheck import InspectingCheck
from engine.models import Upload, UploadKind, UploadStatus, utcnow
from engine.schemas import StoredFile
from engine.security import SignatureError
from engine.storage import Check, Refused, TooLarge
from engine.storage.local import LocalStorage
from engine.uploads import (
    content_type_matches,
    size_cap,
    storage_full_detail,
    storage_left,
    too_large_detail,
)

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
    storage = services.storage
    if not isinstance(storage, LocalStorage):
        raise HTTPException(404, "uploads go to object storage: PUT to the upload URL given")
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
    cap = size_cap(services.settings, upload.kind)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise HTTPException(413, too_large_detail(cap))
    check: Check | None = None
    inspection: InspectingCheck | None = None
    if upload.kind == UploadKind.LORA.value:
        check = inspection = InspectingCheck(settings_of(services).zip)
    previous = upload.status
    old_size = upload.size_bytes
    # The storage limit is counted: the room is read and this PUT's most bytes reserved on
    # its row under the member's lock, so simultaneous PUTs each see the others' bytes.
    await lock_member(session, upload.user_id)
    room = await storage_left(session, services.settings, upload)
    if room <= 0 or (declared and declared.isdigit() and int(declared) > room):
        await session.rollback()
        raise HTTPException(413, storage_full_detail(services.settings))
    limit = min(cap, room)
    # One body per upload: claim it atomically, so that a concurrent PUT (or a use of the
    # upload) sees RECEIVING and is refused instead of replacing bytes under us.
    if not await _move(session, upload.id, previous, UploadStatus.RECEIVING.value, hold=limit):
        raise HTTPException(409, "another PUT to this upload URL is in progress")

    async def give_back(error: str | None = None) -> None:
        # The reservation is released: the row holds its old bytes' size again.
        await _move(
            session, upload.id, UploadStatus.RECEIVING.value, previous, error=error, hold=old_size
        )

    try:
        size = await storage.write_stream(
            storage.upload_path(upload.id),
            request.stream(),
            limit,
            check,
        )
    except TooLarge as exc:
        await give_back()
        if room < cap:
            raise HTTPException(413, storage_full_detail(services.settings)) from exc
        raise HTTPException(413, too_large_detail(cap)) from exc
    except Refused as exc:
        # Kept on the row so that the uploads list says why; the status is unchanged.
        await give_back(str(exc))
        raise HTTPException(400, str(exc)) from exc
    except BaseException:
        with anyio.CancelScope(shield=True):
            await give_back()
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


class _Keep:
    """``_move``'s default for ``hold``: leave the row's counted size as it is."""


_KEEP = _Keep()


async def _move(
    session: AsyncSession,
    upload_id: str,
    frm: str,
    to: str,
    *,
    error: str | None = None,
    size: int | None = None,
    inspection: dict[str, Any] | None = None,
    hold: int | _Keep | None = _KEEP,
) -> bool:
    """Atomically move an upload from status ``frm`` to ``to``; False if it was not ``frm``.

    New bytes (``size``) replace the kept inspection: with theirs, or with none. ``hold``
    sets the bytes the row counts against the storage limit without new bytes (a PUT's
    reservation, or the old size given back).
    """
    values: dict[str, object] = {"status": to, "error": error, "updated_at": utcnow()}
    if not isinstance(hold, _Keep):
        values["size_bytes"] = hold
    if size is not None:
        values["size_bytes"] = size
        values["inspection"] = inspection
    res = await session.execute(
        update(Upload).where(Upload.id == upload_id, Upload.status == frm).values(**values)
    )
    await session.commit()
    return bool(res.rowcount)  # type: ignore[attr-defined]


@router.get("/artifacts/{key:path}", response_class=FileResponse)
async def get_artifact(
    key: str, services: Services, expires: Expires, signature: Signature
) -> Response:
    """Serve a generated artifact through its signed, expiring URL."""
    try:
        services.signer.verify("GET", f"artifact:{key}", expires, signature)
    except SignatureError as exc:
        raise HTTPException(403, f"artifact URL refused: {exc}") from exc
    storage = services.storage
    if not isinstance(storage, LocalStorage):
        try:
            url = storage.presigned_get(key, max(1, expires - int(time.time())))
        except ValueError as exc:
            raise HTTPException(404, "artifact not found") from exc
        if url is None:  # pragma: no cover - every non-local store presigns
            raise HTTPException(404, "artifact not found")
        return RedirectResponse(url, status_code=307)
    try:
        path = storage.artifact_path(key)
    except ValueError as exc:
        raise HTTPException(404, "artifact not found") from exc
    if not path.is_file():
        raise HTTPException(404, "artifact not found")
    return FileResponse(path, filename=path.name)
