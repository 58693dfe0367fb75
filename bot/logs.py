"""Logging set-up that keeps API keys out of logs, whatever the level.

discord.py logs every gateway event at DEBUG, modal submissions included, and a member
pastes their API key into a modal; so discord's loggers never go below INFO, and every
record passes a filter that masks anything shaped like a Ta-da key.
"""

from __future__ import annotations

import logging
import re

KEY_PATTERN = re.compile(r"tada_[A-Za-z0-9_\-]{8,}")


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
    """Root logging for ``tada-bot``: our level, discord at INFO or quieter, keys masked."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(RedactKeys())
    discord_logger = logging.getLogger("discord")
    discord_logger.setLevel(max(logging.INFO, root.level))
