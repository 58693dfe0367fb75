"""The engine's domain errors: what went wrong, said for the caller, without HTTP.

Services (``engine/image/service.py``, ...) raise these; ``engine/api/errors.py`` maps
them to responses (``{"detail": ...}``), so HTTP stays in ``engine/api/``::

    EngineError                  detail: a sentence the caller can act on
     ├── NotFound                absent, or another user's (never tell them apart): 404
     ├── Rejected                input that cannot be used as it is: 400
     │    ├── TooLargeUpload     an upload past its size cap or the owner's storage: 413
     │    └── WrongContentType   an upload stored with another type than its URL's: 415
     ├── Conflict                the resource is in a state that forbids this now: 409
     ├── InvalidField            one request field is wrong: 422, FastAPI's validation shape
     ├── StillRunning            a job outlived the wait and goes on: 504
     └── JobOutcomeError         a job ended without the result it promised: 500
"""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """Root of the engine's domain errors; ``detail`` is shown to the caller."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(EngineError):
    """The resource does not exist for this caller."""


class Rejected(EngineError):
    """The input cannot be used as it is (an empty or bad upload, a LoRA not ready)."""


class TooLargeUpload(Rejected):
    """An upload larger than its kind's cap, or than the owner's storage left."""


class WrongContentType(Rejected):
    """An upload whose stored content type is not the one its upload URL asked for."""


class Conflict(EngineError):
    """The resource's state forbids the request now."""


class InvalidField(EngineError):
    """One field of the request is wrong (``location`` is ``body``, ``query``, ...)."""

    def __init__(self, location: str, field: str, message: str, value: object = None) -> None:
        super().__init__(message)
        self.location = location
        self.field = field
        self.value = value

    def error(self) -> dict[str, Any]:
        """The error as one entry of FastAPI's validation error list."""
        return {
            "loc": [self.location, self.field],
            "msg": self.detail,
            "type": "value_error",
            "input": self.value,
        }


class StillRunning(EngineError):
    """A job did not finish within the wait; it keeps running (``job_id``)."""

    def __init__(self, detail: str, job_id: str) -> None:
        super().__init__(detail)
        self.job_id = job_id


class JobOutcomeError(EngineError):
    """A job ended (failed, cancelled, or without its record) instead of giving its result."""
