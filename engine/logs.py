"""Log hygiene: logs keep paths, never signed query strings, keys or emails.

Two layers, on every side (engine, worker, bot):

- third-party loggers that print URLs (httpx logs every request at INFO with its full URL:
  signed artifact and upload URLs, members' emails in ``register?email=``) are quiet
  below WARNING (:func:`quiet_url_loggers`);
- every record that reaches a handler goes through :class:`ScrubSecrets` (defence in
  depth): a URL's query string, an email address, a Ta-da key and an ``Authorization`` or
  ``X-API-Key`` value are masked in its message, its exception text and its stack.
"""

from __future__ import annotations

import logging
import re
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
    """Attach the redactor to uvicorn's access logger once (idempotent), and
    :class:`ScrubSecrets` to uvicorn's loggers: uvicorn gives them handlers of their own,
    which the root's filters never see."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, AccessLogRedactor) for f in logger.filters):
        logger.addFilter(AccessLogRedactor())
    for name in (ACCESS_LOGGER, "uvicorn.error"):
        named = logging.getLogger(name)
        if not any(isinstance(f, ScrubSecrets) for f in named.filters):
            named.addFilter(ScrubSecrets())


# Loggers of libraries that print request URLs (and so signatures and emails) at INFO or
# DEBUG: quiet below WARNING whatever the configured level.
URL_LOGGERS = (
    "httpx",
    "httpcore",
    "urllib3",
    "botocore",
    "boto3",
    "s3transfer",
    "aiohttp.access",
    "aiohttp.client",
    "huggingface_hub",
)
KEY_PATTERN = re.compile(r"tada_[A-Za-z0-9_\-]{8,}")
# A path (or a whole URL) followed by a query string: the query goes, the path stays.
_QUERY = re.compile(
    r"(?P<base>(?:\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#\"'<>]*)?/[^\s?#\"'<>]*)"
    r"\?[^\s\"'<>#]+"
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+(?:@|%40)[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
_HEADER = re.compile(
    r"(?i)(?P<name>\b(?:x-api-key|authorization)\b[\"']?\s*[:=,]\s*[\"']?)"
    r"(?:bearer\s+)?[^\s\"',}\]]+"
)
_SIGNATURE = re.compile(
    r"(?i)(?P<name>\b(?:x-amz-)?(?:signature|credential|security-token)=)[^&\s\"']+"
)


def scrub(text: str) -> str:
    """``text`` with query strings, emails, Ta-da keys and credential headers masked."""
    text = _QUERY.sub(lambda m: f"{m.group('base')}?…", text)
    text = _SIGNATURE.sub(lambda m: f"{m.group('name')}***", text)
    text = _HEADER.sub(lambda m: f"{m.group('name')}***", text)
    text = KEY_PATTERN.sub(lambda m: f"tada_…{m.group(0)[-4:]}", text)
    return _EMAIL.sub("[email]", text)


class ScrubSecrets(logging.Filter):
    """Masks what :func:`scrub` masks in a record's final message, its exception text and
    its stack; put it on handlers, where every propagated record passes.

    String arguments are scrubbed in place, so a formatter that reads them (uvicorn's
    access formatter unpacks ``record.args``) still finds them; only when the merged message
    still holds a secret (an argument that is not a string, such as httpx's URL objects)
    does the record become its scrubbed message without arguments.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = scrub(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(scrub(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: scrub(v) if isinstance(v, str) else v for k, v in record.args.items()}
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep its parts, scrubbed
            message = f"{record.msg!r} {record.args!r}"
        cleaned = scrub(message)
        if cleaned != message and record.name != ACCESS_LOGGER:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def quiet_url_loggers() -> None:
    """Third-party loggers that print URLs: WARNING and above only."""
    for name in URL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def scrub_root_handlers() -> None:
    """Put :class:`ScrubSecrets` on every handler of the root logger (idempotent)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ScrubSecrets) for f in handler.filters):
            handler.addFilter(ScrubSecrets())
