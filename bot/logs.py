"""Logging set-up that keeps API keys, signed URLs and emails out of logs, whatever the level.

discord.py logs every gateway event at DEBUG, modal submissions included, and a member
pastes their API key into a modal; so discord's loggers never go below INFO, and every
record passes a filter that masks anything shaped like a Ta-da key. httpx logs every
request the bot makes to the engine at INFO, with its full URL (signed artifact and upload
URLs, valid for hours; members' emails in ``register?email=``): it and the other
libraries that print URLs stay at WARNING, and every record is scrubbed of query strings,
emails and credentials too (:mod:`engine.logs`), as defence in depth.
"""

from __future__ import annotations

import logging

from engine.logs import KEY_PATTERN, ScrubSecrets, quiet_url_loggers

__all__ = ["KEY_PATTERN", "RedactKeys", "configure_logging", "redact"]


def redact(text: str) -> str:
    """``text`` with every Ta-da-key-shaped string masked."""
    return KEY_PATTERN.sub(lambda m: f"tada_…{m.group(0)[-4:]}", text)


class RedactKeys(logging.Filter):
    """Masks API keys in a record's final message (arguments merged in first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(level: str) -> None:
    """Root logging for ``tada-bot``: our level, discord at INFO or quieter, URL-printing
    libraries at WARNING, keys, signed query strings and emails masked."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactKeys) for f in handler.filters):
            handler.addFilter(RedactKeys())
        if not any(isinstance(f, ScrubSecrets) for f in handler.filters):
            handler.addFilter(ScrubSecrets())
    discord_logger = logging.getLogger("discord")
    discord_logger.setLevel(max(logging.INFO, root.level))
    quiet_url_loggers()
