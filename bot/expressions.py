"""Posted results become the server's expressions: a speech a soundboard sound, an image a
custom emoji or a sticker (issue 27).

Off until an admin turns it on (``/tada-admin expressions``). Who may press the buttons
follows the server's roles twice over: Discord's own (the member needs **Create
Expressions**, as they would to upload one by hand) and the bot's (the member must be
allowed the result's feature, ``/tada-admin roles``). The bot needs Create Expressions too.
The expression names its creator: the sticker's description and the audit-log reason say
who made it, and the bot's answer in the channel mentions them without pinging.
"""

from __future__ import annotations

import asyncio
import io
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import discord

from bot.errors import UserFacingError
from bot.expression_media import (
    STICKER_MAX_BYTES,
    ExpressionMediaError,
    emoji_png,
    soundboard_mp3,
    sticker_png,
)
from bot.gate import Feature
from bot.media import MAX_AUDIO_BYTES
from bot.policy.settings import GuildSettings

# Results bigger than this are not read back from Discord to be made into an expression.
MAX_SOURCE_BYTES = MAX_AUDIO_BYTES
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_]+")


class ExpressionKind(StrEnum):
    """What a result becomes."""

    SOUND = "sound"  # a soundboard sound, from a speech
    EMOJI = "emoji"  # a custom emoji, from an image
    STICKER = "sticker"  # a guild sticker, from an image

    @property
    def feature(self) -> Feature:
        """The feature whose roles decide who may make it."""
        return Feature.VOICE if self is ExpressionKind.SOUND else Feature.LORA

    @property
    def label(self) -> str:
        return {"sound": "soundboard sound", "emoji": "emoji", "sticker": "sticker"}[self.value]


@dataclass(frozen=True)
class Made:
    """An expression made: what to tell the channel."""

    kind: ExpressionKind
    name: str
    shown: str  # how the channel message shows it (the emoji itself, or its name)


def check_may_create(
    member: discord.Member | discord.User, settings: GuildSettings, kind: ExpressionKind
) -> None:
    """Raise :class:`UserFacingError` unless ``member`` may make ``kind`` here."""
    if not settings.expressions:
        raise UserFacingError(
            "Making soundboard sounds, emoji and stickers from results is off on this server "
            "(an admin turns it on with `/tada-admin expressions`).",
            reason="expressions_off",
        )
    if not isinstance(member, discord.Member):
        raise UserFacingError("This works in a server only.")
    perms = member.guild_permissions
    if not (perms.create_expressions or perms.manage_expressions or perms.administrator):
        raise UserFacingError(
            f"Making a {kind.label} needs the **Create Expressions** permission on this "
            "server; ask the server admins.",
            reason="role",
        )
    roles = frozenset(role.id for role in member.roles)
    if not settings.role_allows(kind.feature, member.guild.id, roles, is_admin=perms.administrator):
        raise UserFacingError(
            f"On this server, only members with the roles allowed to use the "
            f"{kind.feature.value} feature may make a {kind.label} from a result.",
            reason="role",
        )


def expression_name(base: str, *, limit: int = 32, emoji: bool = False) -> str:
    """A name Discord takes: 2 to ``limit`` characters (an emoji's: letters, digits, _)."""
    text = base.strip()
    if emoji:
        text = _NAME_CHARS.sub("_", text).strip("_")
    text = text[:limit].strip()
    if len(text) < 2:
        text = "tada_result" if emoji else "Ta-da result"
    return text


def _source_attachment(message: discord.Message | None, *, audio: bool) -> discord.Attachment:
    for attachment in message.attachments if message is not None else ():
        kind = attachment.content_type or ""
        wanted = kind.startswith("audio/") or attachment.filename.endswith((".mp3", ".ogg"))
        if not audio:
            wanted = kind.startswith("image/") or attachment.filename.endswith(
                (".png", ".jpg", ".jpeg", ".webp")
            )
        if wanted and attachment.size <= MAX_SOURCE_BYTES:
            return attachment
    what = "speech" if audio else "image"
    raise UserFacingError(f"This message has no {what} left to make an expression from.")


def _discord_refusal(exc: discord.HTTPException, kind: ExpressionKind) -> UserFacingError:
    if isinstance(exc, discord.Forbidden):
        return UserFacingError(
            f"I may not make a {kind.label} here: the server must give me the **Create "
            "Expressions** permission.",
            reason="bot_permissions",
        )
    # Discord's own words: a full soundboard or emoji list, a name it refuses, ...
    return UserFacingError(f"Discord refused the {kind.label}: {exc.text or exc.status}.")


async def make_expression(
    member: discord.Member,
    message: discord.Message | None,
    kind: ExpressionKind,
    *,
    base_name: str,
    owner_id: int,
) -> Made:
    """Make ``kind`` from the result ``message`` holds, for ``member`` (checked already)."""
    guild = member.guild
    source = _source_attachment(message, audio=kind is ExpressionKind.SOUND)
    data = await source.read()
    reason = f"Ta-da: made by {member} ({member.id}) from a result of member {owner_id}"
    try:
        if kind is ExpressionKind.SOUND:
            sound = await asyncio.to_thread(soundboard_mp3, data)
            name = expression_name(base_name)
            await guild.create_soundboard_sound(name=name, sound=sound, reason=reason)
            return Made(kind, name, f"**{name}**")
        if kind is ExpressionKind.EMOJI:
            image = await asyncio.to_thread(emoji_png, data)
            name = expression_name(base_name, emoji=True)
            emoji = await guild.create_custom_emoji(name=name, image=image, reason=reason)
            return Made(kind, name, f"{emoji} `:{name}:`")
        image = await asyncio.to_thread(sticker_png, data)
        assert len(image) <= STICKER_MAX_BYTES
        name = expression_name(base_name, limit=30)
        description = expression_name(f"Made by {member.display_name} with Ta-da", limit=100)
        await guild.create_sticker(
            name=name,
            description=description,
            emoji="🎨",
            file=discord.File(io.BytesIO(image), filename="sticker.png"),
            reason=reason,
        )
        return Made(kind, name, f"**{name}**")
    except ExpressionMediaError as exc:
        raise UserFacingError(f"I could not make the {kind.label}: {exc}.") from exc
    except discord.HTTPException as exc:
        raise _discord_refusal(exc, kind) from exc


def made_line(member_id: int, made: Made) -> str:
    """The channel's note: the expression and who made it."""
    where = {
        ExpressionKind.SOUND: "to the soundboard",
        ExpressionKind.EMOJI: "as an emoji",
        ExpressionKind.STICKER: "as a sticker",
    }[made.kind]
    return f"<@{member_id}> added {made.shown} {where}, made from this result."


def base_name_of(params: dict[str, Any], kind: ExpressionKind) -> str:
    """The expression's name from the job's parameters (the voice's or the LoRA's name)."""
    if kind is ExpressionKind.SOUND:
        return str(params.get("voice_name") or "Ta-da speech")
    return str(params.get("lora_name") or params.get("model") or "tada")
