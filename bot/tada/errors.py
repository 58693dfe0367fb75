"""Errors of the Ta-da client, split by cause.

Every error the client raises derives from :class:`TadaError`::

    TadaError
    ├── TadaTransportError        no response: connection refused, reset, DNS, ...
    │   └── TadaTimeout           no response in time (connect, read, write or pool)
    ├── TadaProtocolError         a response that breaks the contract (bad JSON, wrong shape)
    └── TadaHTTPError             a response with an error status; ``status`` and ``detail``
        ├── BadRequest            400
        ├── Unauthorized          401 - missing or unknown API key
        ├── Forbidden             403 - e.g. a pre-signed URL refused or expired
        ├── NotFound              404 - unknown id, or another user's
        ├── Conflict              409 - e.g. an email already registered
        ├── PayloadTooLarge       413 - an upload over its size cap
        ├── UnsupportedMediaType  415 - an upload sent with the wrong Content-Type
        ├── InvalidRequest        422 - FastAPI validation; ``errors`` lists each problem
        ├── RateLimited           429 - ``retry_after`` seconds, when the server said
        └── ServerError           5xx
            └── ServiceUnavailable  503 - e.g. a feature the server has not configured

The client wraps the underlying httpx exception with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Any


class TadaError(Exception):
    """Root of every error raised by the Ta-da client."""


class TadaTransportError(TadaError):
    """The request got no response (network, DNS, connection refused or reset)."""


class TadaTimeout(TadaTransportError):
    """The request got no response in time."""


class TadaProtocolError(TadaError):
    """The server answered something the contract does not allow."""


class TadaHTTPError(TadaError):
    """The server answered with an error status; ``detail`` is its explanation."""

    status: int

    def __init__(self, status: int, detail: Any, *, method: str, path: str) -> None:
        self.status = status
        self.detail = detail
        self.method = method
        self.path = path
        super().__init__(f"{method} {path} -> {status}: {self.message}")

    @property
    def message(self) -> str:
        """``detail`` as one line of text (422 lists are joined)."""
        if isinstance(self.detail, list):
            parts = []
            for item in self.detail:
                if isinstance(item, dict):
                    loc = ".".join(
                        str(p) for p in item.get("loc", []) if p not in ("query", "body")
                    )
                    parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg")))
                else:
                    parts.append(str(item))
            return "; ".join(parts)
        return str(self.detail)


class BadRequest(TadaHTTPError):
    """400: the request was refused as a whole (e.g. an empty upload)."""


class Unauthorized(TadaHTTPError):
    """401: the API key is missing or unknown."""


class Forbidden(TadaHTTPError):
    """403: refused (a pre-signed URL that is wrong or expired)."""


class NotFound(TadaHTTPError):
    """404: no such resource for this API key."""


class Conflict(TadaHTTPError):
    """409: the resource is in a state that forbids this (e.g. email already registered)."""


class PayloadTooLarge(TadaHTTPError):
    """413: the upload is over its size cap."""


class UnsupportedMediaType(TadaHTTPError):
    """415: the upload was sent with the wrong Content-Type."""


class InvalidRequest(TadaHTTPError):
    """422: validation failed; :attr:`errors` is FastAPI's list of ``{loc, msg, type}``."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The individual validation problems (empty when ``detail`` was a plain string)."""
        if isinstance(self.detail, list):
            return [item for item in self.detail if isinstance(item, dict)]
        return []


class RateLimited(TadaHTTPError):
    """429: too many requests; :attr:`retry_after` says how long to wait, when known."""

    def __init__(
        self,
        status: int,
        detail: Any,
        *,
        method: str,
        path: str,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(status, detail, method=method, path=path)


class ServerError(TadaHTTPError):
    """5xx: the server failed."""


class ServiceUnavailable(ServerError):
    """503: the server cannot do this now; ``detail`` often says what to configure."""


_BY_STATUS: dict[int, type[TadaHTTPError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidRequest,
}


def error_class_for(status: int) -> type[TadaHTTPError]:
    """The exception class for an error status (any other 4xx is the base class)."""
    if status == 503:
        return ServiceUnavailable
    if status >= 500:
        return ServerError
    if status == 429:
        return RateLimited
    return _BY_STATUS.get(status, TadaHTTPError)
