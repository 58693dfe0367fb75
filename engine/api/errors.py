"""Helpers that raise errors in FastAPI's own shapes."""

from __future__ import annotations

from typing import NoReturn

from fastapi.exceptions import RequestValidationError


def invalid(location: str, field: str, message: str, value: object = None) -> NoReturn:
    """Raise a 422 shaped exactly like FastAPI's own validation errors."""
    raise RequestValidationError(
        [{"loc": [location, field], "msg": message, "type": "value_error", "input": value}]
    )
