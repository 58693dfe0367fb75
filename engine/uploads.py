"""Uploads: validation of names and files, creation, listing, and taking one for use."""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from engine.errors import Conflict, Rejected, TooLargeUpload, WrongContentType
from engine.models import Upload, UploadKind, UploadStatus, utcnow
from engine.storage import Check, NotStored, Storage, TooLarge

if TYPE_CHECKING:
    from engine.settings import EngineSettings

AUDIO_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
    "ogg": "audio/ogg",
    "flac": "audio/flac",
    "webm": "audio/webm",
}
ZIP_TYPES: dict[str, str] = {"zip": "application/zip"}
# Other spellings browsers and tools send for the same formats.
CONTENT_TYPE_ALIASES: dict[str, frozenset[str]] = {
    "audio/wav": frozenset({"audio/x-wav", "audio/wave", "audio/vnd.wave"}),
    "audio/mpeg": frozenset({"audio/mp3", "audio/mpeg3"}),
    "audio/mp4": frozenset({"audio/x-m4a", "audio/m4a"}),
    "audio/flac": frozenset({"audio/x-flac"}),
    "application/zip": frozenset({"application/x-zip-compressed", "application/x-zip"}),
}
TRIGGER_WORD_RE = re.compile(r"^[A-Za-z0-9 _-]{1,50}$")


class UploadError(ValueError):
    """A name, trigger word or file name that cannot be accepted; the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def clean_name(name: str) -> str:
    value = name.strip()
    if not 1 <= len(value) <= 100:
        raise UploadError("name", "name must be 1-100 characters")
    if any(ord(c) < 32 for c in value):
        raise UploadError("name", "name must not contain control characters")
    return value


def clean_trigger_word(word: str) -> str:
    value = word.strip()
    if not TRIGGER_WORD_RE.match(value):
        raise UploadError(
            "trigger_word",
            "trigger word must be 1-50 letters, digits, spaces, '_' or '-'",
        )
    return value


def content_type_for(kind: UploadKind, file_name: str) -> str:
    """Validate a bare file name for ``kind`` and return the content type to send."""
    if not file_name or len(file_name) > 255 or any(ord(c) < 32 for c in file_name):
        raise UploadError("file_name", "file_name must be 1-255 printable characters")
    if (
        PurePosixPath(file_name).name != file_name
        or PureWindowsPath(file_name).name != file_name
        or file_name in {".", ".."}
    ):
        raise UploadError("file_name", "file_name must be a bare file name, without a path")
    ext = file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
    table = AUDIO_TYPES if kind is UploadKind.VOICE else ZIP_TYPES
    if ext not in table:
        allowed = ", ".join(f".{e}" for e in table)
        raise UploadError("file_name", f"file type not supported: use {allowed}")
    return table[ext]


def content_type_matches(expected: str, sent: str | None) -> bool:
    if not sent:
        return False
    value = sent.split(";", 1)[0].strip().lower()
    return value == expected or value in CONTENT_TYPE_ALIASES.get(expected, frozenset())


async def create_upload(
    session: AsyncSession,
    *,
    user_id: str,
    kind: UploadKind,
    name: str,
    file_name: str,
    trigger_word: str | None = None,
) -> Upload:
    upload = Upload(
        user_id=user_id,
        kind=kind.value,
        name=clean_name(name),
        file_name=file_name,
        trigger_word=clean_trigger_word(trigger_word) if trigger_word is not None else None,
        content_type=content_type_for(kind, file_name),
        status=UploadStatus.PENDING.value,
    )
    session.add(upload)
    await session.commit()
    return upload


# Built once, run with parameters: see engine.api.deps._USER_BY_KEY.
_UPLOADS_OF = (
    select(Upload)
    .where(Upload.user_id == bindparam("user_id"), Upload.kind == bindparam("kind"))
    .order_by(Upload.created_at.desc(), Upload.id)
)


async def list_uploads(session: AsyncSession, user_id: str, kind: UploadKind) -> list[Upload]:
    rows = await session.scalars(_UPLOADS_OF, {"user_id": user_id, "kind": kind.value})
    return list(rows)


async def get_owned_upload(
    session: AsyncSession, user_id: str, upload_id: str, kind: UploadKind
) -> Upload | None:
    """The caller's upload of ``kind``, or None (another user's id looks like no id)."""
    upload = await session.get(Upload, upload_id)
    if upload is None or upload.user_id != user_id or upload.kind != kind.value:
        return None
    return upload


async def mark_upload(
    session: AsyncSession,
    upload_id: str,
    status: UploadStatus,
    error: str | None = None,
    *,
    expect: UploadStatus | None = None,
) -> bool:
    """Move an upload to ``status``; with ``expect``, only from that status (atomic)."""
    stmt = update(Upload).where(Upload.id == upload_id)
    if expect is not None:
        stmt = stmt.where(Upload.status == expect.value)
    res = await session.execute(stmt.values(status=status.value, error=error, updated_at=utcnow()))
    await session.commit()
    return bool(res.rowcount)  # type: ignore[attr-defined]


class NothingUploaded(Rejected):
    """A pending upload whose URL was not used yet: the store has no bytes for it."""


def size_cap(settings: EngineSettings, kind: str) -> int:
    """The most bytes one upload of ``kind`` may have."""
    limits = settings.uploads
    return limits.max_audio_bytes if kind == UploadKind.VOICE.value else limits.max_zip_bytes


def too_large_detail(cap: int) -> str:
    return f"file is larger than the {cap // (1024 * 1024)} MB limit"


def storage_full_detail(settings: EngineSettings) -> str:
    total = settings.limits.max_stored_bytes_per_user
    return (
        f"this file would take your uploads past your storage limit ({total // (1024 * 1024)} MB)"
    )


async def storage_left(session: AsyncSession, settings: EngineSettings, upload: Upload) -> int:
    """Bytes the owner of ``upload`` may still keep (this upload's old bytes are replaced)."""
    used = await session.scalar(
        select(func.coalesce(func.sum(Upload.size_bytes), 0)).where(
            Upload.user_id == upload.user_id, Upload.id != upload.id
        )
    )
    return settings.limits.max_stored_bytes_per_user - int(used or 0)


async def receive_direct_upload(
    session: AsyncSession,
    storage: Storage,
    settings: EngineSettings,
    upload: Upload,
    check: Check | None = None,
) -> None:
    """Accept the bytes a client PUT straight to object storage, as the engine's own PUT
    route would have: the same size cap, storage limit, content type and ``check``.

    The store's pre-signed URL binds the content type but cannot bind a size range, and
    the engine never saw the bytes arrive, so this runs when a pending upload is first
    used: a HEAD for size and type, then ``check`` on a downloaded copy. Refused bytes are
    deleted (nothing is kept), the row keeps its status with the reason in ``error``, and a
    fixed file can be PUT to the same URL. On success the upload is ``uploaded``.
    """
    previous = UploadStatus(upload.status)
    # One look at a time: a concurrent use of the same upload sees RECEIVING and waits.
    if not await mark_upload(session, upload.id, UploadStatus.RECEIVING, expect=previous):
        raise Conflict("this upload is being checked by another request; try again shortly")
    try:
        size = await _look_at_direct_upload(session, storage, settings, upload, check)
    except NothingUploaded:
        await mark_upload(session, upload.id, previous, expect=UploadStatus.RECEIVING)
        raise
    except Rejected as exc:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(storage.delete_upload, upload.id)
            await mark_upload(
                session, upload.id, previous, exc.detail, expect=UploadStatus.RECEIVING
            )
        raise
    except BaseException:
        with anyio.CancelScope(shield=True):
            await mark_upload(session, upload.id, previous, expect=UploadStatus.RECEIVING)
        raise
    await session.execute(
        update(Upload)
        .where(Upload.id == upload.id, Upload.status == UploadStatus.RECEIVING.value)
        .values(
            status=UploadStatus.UPLOADED.value, size_bytes=size, error=None, updated_at=utcnow()
        )
    )
    await session.commit()
    await session.refresh(upload)


async def _look_at_direct_upload(
    session: AsyncSession,
    storage: Storage,
    settings: EngineSettings,
    upload: Upload,
    check: Check | None,
) -> int:
    what = "sample" if upload.kind == UploadKind.VOICE.value else "zip"
    # The words of the engine's own answers before any PUT (voices and LoRAs differ).
    nothing = (
        "not uploaded: PUT the sample to its upload URL first"
        if upload.kind == UploadKind.VOICE.value
        else "nothing uploaded yet: PUT the zip to its upload URL first"
    )
    found = await storage.stat_upload(upload.id)
    if found is None:
        raise NothingUploaded(nothing)
    cap = size_cap(settings, upload.kind)
    if found.size > cap:
        raise TooLargeUpload(too_large_detail(cap))
    if found.size > await storage_left(session, settings, upload):
        raise TooLargeUpload(storage_full_detail(settings))
    if found.size == 0:
        raise Rejected("the file is empty")
    if not content_type_matches(upload.content_type, found.content_type):
        raise WrongContentType(
            f"the {what} was stored as {found.content_type or 'no type'}; "
            f"PUT it with Content-Type: {upload.content_type}"
        )
    if check is not None:

        def run_check() -> str | None:
            with storage.local_upload(upload.id, cap) as path:
                return check(path)

        try:
            problem = await anyio.to_thread.run_sync(run_check)
        except NotStored as exc:
            raise NothingUploaded(nothing) from exc
        except TooLarge as exc:  # replaced by a larger file since the HEAD
            raise TooLargeUpload(too_large_detail(cap)) from exc
        if problem is not None:
            raise Rejected(problem)
    return found.size
