"""Uploads: validation of names and files, creation, listing, and taking one for use."""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from engine.models import Upload, UploadKind, UploadStatus, utcnow

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
