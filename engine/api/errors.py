"""Errors in HTTP's shapes: helpers for routes, and the mapping of the domain's errors.

The domain raises :mod:`engine.errors`; :func:`install_error_handlers` answers each with
its status and ``{"detail": ...}`` (a wrong field as FastAPI's own 422), so services never
import HTTP.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from engine.errors import (
    Conflict,
    EngineError,
    InvalidField,
    JobOutcomeError,
    NotFound,
    Rejected,
    StillRunning,
    TooLargeUpload,
    WrongContentType,
)

# The status of each domain error (a subclass takes its nearest listed parent's).
STATUS_OF: dict[type[EngineError], int] = {
    NotFound: 404,
    Rejected: 400,
    TooLargeUpload: 413,
    WrongContentType: 415,
    Conflict: 409,
    StillRunning: 504,
    JobOutcomeError: 500,
}


def invalid(location: str, field: str, message: str, value: object = None) -> NoReturn:
    """Raise a 422 shaped exactly like FastAPI's own validation errors."""
    raise RequestValidationError(
        [{"loc": [location, field], "msg": message, "type": "value_error", "input": value}]
    )


def status_of(exc: EngineError) -> int:
    """The HTTP status answering ``exc`` (500 for an error nobody mapped)."""
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 500


def install_error_handlers(
    app: FastAPI,
    *,
    validation: Callable[[Request, RequestValidationError], Awaitable[Response]],
) -> None:
    """Answer the domain's errors; ``validation`` is the app's 422 handler, which a
    :class:`~engine.errors.InvalidField` goes through so that both look the same."""

    async def invalid_field(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvalidField)
        return await validation(request, RequestValidationError([exc.error()]))

    async def engine_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EngineError)
        return JSONResponse(status_code=status_of(exc), content={"detail": exc.detail})

    app.add_exception_handler(InvalidField, invalid_field)
    app.add_exception_handler(EngineError, engine_error)
