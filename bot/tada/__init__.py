"""The typed Ta-da client: :class:`TadaClient`, its models and its error tree."""

from bot.tada.client import HOSTED_BASE_URL, RetryPolicy, TadaClient, parse_retry_after
from bot.tada.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TadaError,
    TadaHTTPError,
    TadaProtocolError,
    TadaTimeout,
    TadaTransportError,
    Unauthorized,
    UnsupportedMediaType,
)

__all__ = [
    "HOSTED_BASE_URL",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "TadaClient",
    "TadaError",
    "TadaHTTPError",
    "TadaProtocolError",
    "TadaTimeout",
    "TadaTransportError",
    "Unauthorized",
    "UnsupportedMediaType",
    "parse_retry_after",
]
