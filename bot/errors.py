"""What a member sees when something fails, decided in one place.

Only :class:`UserFacingError` (and the Ta-da errors that mean something to a member) reach
Discord as text. Anything else is logged with its traceback under a short reference id,
and the member is told that id, so a report can be matched to the log line.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

import discord
from discord import app_commands

from bot.metrics import metrics_of
from bot.tada.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    TadaError,
    TadaHTTPError,
    TadaTimeout,
    TadaTransportError,
    Unauthorized,
    UnsupportedMediaType,
)

log = logging.getLogger("bot.errors")


class UserFacingError(Exception):
    """An error whose message is written for the member: what went wrong, what to do.

    ``reason`` names the kind of refusal for the operator's metrics (``tada_bot_refusals``:
    channel, role, quota, cooldown, moderation...); a few words, never the member's text.
    """

    # The reason of a refusal that names none: the member's input cannot be used.
    default_reason = "invalid_input"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        self.message = message
        self.reason = reason or self.default_reason
        super().__init__(message)


class NotLinked(UserFacingError):
    """The member has no Ta-da account linked yet."""

    default_reason = "not_linked"

    def __init__(self) -> None:
        super().__init__(
            "You have no Ta-da account linked yet: link or register first, with "
            "`/tada register` (new account) or `/tada link` (an API key you already have)."
        )


# How members call the demos (``/demo tadz``, ``/demo pudgy``).
DEMO_NAMES = {"tadz": "Tadz", "pudgy": "Pudgy Penguins"}


class DemoNotSetUp(UserFacingError):
    """The engine has no model for this demo: no request can succeed until the bot's
    operator adds one, so there is nothing to retry."""

    def __init__(self, model: str) -> None:
        name = DEMO_NAMES.get(model, model)
        super().__init__(
            f"The {name} demo is not set up on this server's Ta-da engine yet, so it cannot "
            "make images for now. Server admins: `/tada-admin show` lists what the engine is "
            "missing; whoever runs the bot adds the demo model to the engine's settings."
        )


def new_reference() -> str:
    """A short id that ties a member's report to one log line."""
    return secrets.token_hex(4).upper()


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """The member-facing text for an error, and its reference when it was logged."""

    text: str
    reference: str | None = None


def unwrap(error: BaseException) -> BaseException:
    """The exception a command raised, out of discord.py's wrappers."""
    while isinstance(error, app_commands.CommandInvokeError | app_commands.TransformerError):
        inner = (
            error.__cause__ if isinstance(error, app_commands.TransformerError) else error.original
        )
        if inner is None:
            break
        error = inner
    return error


# Someone else's id and a missing one read the same: an id's existence is not revealed.
NOT_YOURS = "That is not one of yours. `/voice list` and `/lora list` show the ids you can use."


def member_message(error: TadaHTTPError) -> str:
    """The engine's explanation without field names (``text: text must ...`` reads as
    ``text must ...``) or pydantic's ``Value error,`` prefix."""
    if isinstance(error, InvalidRequest) and error.errors:
        texts = [str(item.get("msg", "")).removeprefix("Value error, ") for item in error.errors]
        return "; ".join(t for t in texts if t) or error.message
    return error.message


def caused_by_member(error: BaseException) -> bool:
    """Whether the member's own input or account made this fail (explained privately)."""
    error = unwrap(error)
    return isinstance(
        error,
        UserFacingError
        | Unauthorized
        | NotFound
        | BadRequest
        | InvalidRequest
        | Conflict
        | PayloadTooLarge
        | UnsupportedMediaType,
    )


def _tada_text(error: TadaError) -> str | None:
    """A member-facing text for a Ta-da error that the member can act on, else ``None``."""
    if isinstance(error, Unauthorized):
        return (
            "Ta-da refused your API key (it may have been revoked). "
            "Link a current one with `/tada link`."
        )
    if isinstance(error, RateLimited):
        wait = f" Try again in {round(error.retry_after)} s." if error.retry_after else ""
        return f"Ta-da is receiving too many requests right now.{wait or ' Try again shortly.'}"
    if isinstance(error, TadaTimeout):
        return "The Ta-da API took too long to answer. Try again in a minute."
    if isinstance(error, TadaTransportError):
        return "The Ta-da API cannot be reached right now. Try again in a minute."
    if isinstance(error, NotFound):
        return NOT_YOURS
    if isinstance(
        error, BadRequest | InvalidRequest | Conflict | PayloadTooLarge | UnsupportedMediaType
    ):
        return f"Ta-da refused that: {member_message(error)}"
    if isinstance(error, ServiceUnavailable):
        # Its detail is for the operator (which config section to fill in): logged.
        return (
            "Ta-da cannot do that right now: the engine is not set up for it yet, or is "
            "busy. Try again later; if it keeps failing, tell the server admins (they can "
            "see what is missing in `/tada-admin show`)."
        )
    if isinstance(error, Forbidden):
        return "The upload link expired or was refused. Please try again."
    return None


def reply_for(error: BaseException, *, where: str) -> ErrorReply:
    """Decide what the member sees; log unexpected errors with a reference id."""
    error = unwrap(error)
    if isinstance(error, UserFacingError):
        return ErrorReply(error.message)
    if isinstance(error, app_commands.CheckFailure):
        return ErrorReply(str(error) or "You cannot use this command here.")
    if isinstance(error, TadaError):
        text = _tada_text(error)
        if text is not None:
            if isinstance(error, TadaTransportError):
                log.warning("%s: Ta-da unreachable: %s", where, error)
            elif isinstance(error, ServiceUnavailable):
                log.warning("%s: Ta-da cannot do it (for the operator): %s", where, error.message)
            return ErrorReply(text)
    reference = new_reference()
    status = f" (HTTP {error.status})" if isinstance(error, TadaHTTPError) else ""
    log.error(
        "unexpected error in %s%s, reference %s",
        where,
        status,
        reference,
        exc_info=(type(error), error, error.__traceback__),
    )
    return ErrorReply(
        f"Something went wrong on our side. If it keeps happening, tell the server admins "
        f"this reference: `{reference}`.",
        reference,
    )


async def send_ephemeral(interaction: discord.Interaction, content: str) -> None:
    """Answer ephemerally whatever state the interaction is in (fresh, deferred, answered)."""
    if interaction.response.is_done():
        await interaction.followup.send(content, ephemeral=True)
    else:
        await interaction.response.send_message(content, ephemeral=True)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def refusal_reason(error: BaseException) -> str | None:
    """The metrics reason of a refusal (the member can act on it), or ``None`` for a
    failure on our or Ta-da's side (:func:`failure_reason`)."""
    error = unwrap(error)
    if isinstance(error, UserFacingError):
        return error.reason
    if isinstance(error, app_commands.CommandOnCooldown):
        return "cooldown"
    if isinstance(error, app_commands.CheckFailure):
        return "check_failed"
    if isinstance(error, RateLimited) or caused_by_member(error):
        return f"tada_{_snake(type(error).__name__)}"
    return None


def failure_reason(error: BaseException) -> str:
    """The metrics reason of a failure that is not the member's: Ta-da unreachable, slow or
    not set up, or ``internal`` (logged with a reference)."""
    error = unwrap(error)
    if isinstance(error, TadaTimeout):
        return "tada_timeout"
    if isinstance(error, TadaTransportError):
        return "tada_unreachable"
    if isinstance(error, ServiceUnavailable):
        return "tada_unavailable"
    if isinstance(error, Forbidden):
        return "upload_refused"
    return "internal"


async def report_error(interaction: discord.Interaction, error: BaseException) -> ErrorReply:
    """The central handler: decide the reply, then make sure the member gets it."""
    command = interaction.command
    where = f"/{command.qualified_name}" if command is not None else _component_name(interaction)
    reply = reply_for(error, where=where)
    metrics = metrics_of(interaction.client)
    if metrics is not None:
        reason = refusal_reason(error)
        if reason is not None:
            metrics.refused(reason)
        else:
            metrics.failed(failure_reason(error))
    try:
        await send_ephemeral(interaction, reply.text)
    except discord.HTTPException:
        # The interaction expired or Discord failed: nothing more can reach the member.
        log.warning("could not tell the member about an error in %s", where, exc_info=True)
    return reply


def _component_name(interaction: discord.Interaction) -> str:
    data: dict[str, Any] = dict(interaction.data or {})
    custom_id = data.get("custom_id")
    return f"component {custom_id}" if custom_id else f"interaction {interaction.type.name}"
