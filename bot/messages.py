"""Discord's message limits and the helpers every posted message uses.

One home for the numbers (https://discord.com/developers/docs/resources/message) so that
rendering (:mod:`bot.jobs.render`), buttons and cogs cut text the same way.
"""

from __future__ import annotations

import discord

CONTENT_LIMIT = 2000
EMBED_DESCRIPTION_LIMIT = 4096
EMBED_FIELD_LIMIT = 1024
EMBED_TITLE_LIMIT = 256
# A guild's upload limit when the message has no guild to ask (DMs).
DEFAULT_FILE_LIMIT = 10 * 1024 * 1024


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def requester_only(user_id: int) -> discord.AllowedMentions:
    """Mentions that ping the requester and nobody else, whatever the text holds."""
    return discord.AllowedMentions(
        everyone=False, users=[discord.Object(user_id)], roles=False, replied_user=False
    )


def clip_lines(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters at a line end, saying that more was left out."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 20].rsplit("\n", 1)[0]
    return f"{cut}\n… and more"
