"""ORM tables of the engine database: the source of truth for users, uploads and jobs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the models use."""
    return datetime.now(UTC)


def new_id() -> str:
    """A random UUID4 as a string: ids are opaque and unguessable."""
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    """Declarative base of every engine table."""


class UploadKind(StrEnum):
    """What an upload is for."""

    VOICE = "voice"  # an audio sample to clone a voice from
    LORA = "lora"  # a zip of images to train a LoRA on


class UploadStatus(StrEnum):
    """Lifecycle of an upload."""

    PENDING = "pending"  # URL handed out, no bytes yet
    RECEIVING = "receiving"  # a PUT is streaming its bytes; other PUTs and uses wait (409)
    UPLOADED = "uploaded"  # bytes stored, not used yet (a new PUT replaces them)
    PROCESSING = "processing"  # taken for use (a clone is running); no PUT replaces it now
    PROCESSED = "processed"  # used: a voice was cloned or a training started from it
    FAILED = "failed"  # processing refused it; `error` says why


class JobStatus(StrEnum):
    """Lifecycle of a job; the database row is the truth, the queue only carries ids."""

    QUEUED = "queued"  # accepted, waiting for a worker
    PROCESSING = "processing"  # a worker claimed it
    SUCCEEDED = "succeeded"  # finished; `result` holds the output
    FAILED = "failed"  # gave up; `error` says why
    CANCELED = "canceled"  # canceled before it finished

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


def _tz(dt: datetime) -> datetime:
    """SQLite drops tzinfo; everything stored is UTC, so put it back."""
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    # SHA-256 of the API key; the key itself is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Upload(Base):
    __tablename__ = "uploads"
    __table_args__ = (Index("ix_uploads_user_kind", "user_id", "kind", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100))
    file_name: Mapped[str] = mapped_column(String(255))
    trigger_word: Mapped[str | None] = mapped_column(String(50), nullable=True)
    content_type: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=UploadStatus.PENDING.value)
    size_bytes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A LoRA zip's inspection, made once when its bytes arrived
    # (``engine.image.zipcheck.KeptReport.to_json``); training reads it instead of the zip.
    inspection: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status", "status"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=True
    )
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Written every few seconds by the worker running the job: one that stopped beating
    # died, and another worker may take the job back (engine/jobs/worker.py).
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def as_utc(dt: datetime) -> datetime:
    """Return ``dt`` with UTC tzinfo (SQLite hands back naive datetimes)."""
    return _tz(dt)


def as_utc_or_none(dt: datetime | None) -> datetime | None:
    """:func:`as_utc` for nullable columns."""
    return None if dt is None else _tz(dt)
