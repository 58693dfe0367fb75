"""Log hygiene: the access log keeps paths, never signed query strings or emails."""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode

# Query parameters whose values are secrets or personal data.
REDACTED_PARAMS = frozenset({"signature", "email", "api_key", "token"})
ACCESS_LOGGER = "uvicorn.access"


def redact_query(path: str) -> str:
    """``path?query`` with the values of :data:`REDACTED_PARAMS` replaced by ``***``."""
    if "?" not in path:
        return path
    base, query = path.split("?", 1)
    pairs = [
        (k, "***" if k.lower() in REDACTED_PARAMS else v)
        for k, v in parse_qsl(query, keep_blank_values=True)
    ]
    return f"{base}?{urlencode(pairs, safe='*')}"


class AccessLogRedactor(logging.Filter):
    """Rewrites uvicorn's access records (``client, method, path, version, status``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def install_access_log_redactor() -> None:
    """Attach the redactor to uvicorn's access logger once (idempotent)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, AccessLogRedactor) for f in logger.filters):
        logger.addFilter(AccessLogRedactor())
