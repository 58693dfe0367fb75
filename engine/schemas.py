"""Response models shared by several routers (field names follow upstream's contract)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.models import as_utc

# The largest page offset a list route takes: far past any member's list, and far inside
# the 64-bit integer both databases hold (2^63 and past would fail in the database).
MAX_OFFSET = 1_000_000_000


class RegisterResponse(BaseModel):
    """The new account. ``api_key`` is shown this once and never again."""

    id: str
    email: str
    api_key: str
    created_at: datetime
    message: str = "Store this API key now: it is shown only once."


class UploadUrlResponse(BaseModel):
    """Where and how to PUT the file, and until when."""

    id: str = Field(description="the upload id (same as upload_id)")
    upload_id: str
    name: str
    file_name: str
    trigger_word: str | None = None
    status: str
    upload_url: str
    url: str = Field(description="alias of upload_url")
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str]
    expires_at: datetime
    max_bytes: int


class _UploadView(BaseModel):
    """An upload as the API lists it, read straight from its ``Upload`` row."""

    model_config = ConfigDict(from_attributes=True)

    @field_validator("created_at", check_fields=False)
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # SQLite hands back naive datetimes; the API always states the zone.
        return as_utc(value)


class VoiceUpload(_UploadView):
    id: str
    name: str
    created_at: datetime
    status: str
    file_name: str
    size_bytes: int | None = None
    error: str | None = None


class LoraUpload(_UploadView):
    id: str
    name: str
    created_at: datetime
    trigger_word: str | None
    status: str
    file_name: str
    size_bytes: int | None = None
    error: str | None = None


class StoredFile(BaseModel):
    """Answer to a completed PUT."""

    upload_id: str
    status: str
    size_bytes: int
