"""The gate every creation request passes before any Ta-da call: who, where, how much, what.

Creation commands (voice, LoRA, demo) build a :class:`GateRequest` and ask
``services.gate.admit(request)``; a refusal is a :class:`~bot.errors.UserFacingError`
whose message tells the member what to do. Once the work is accepted they call
``record(request)`` so quotas count it; ``settle(job_id, delivered=...)`` gives back what
a job did not deliver (failed, cancelled, interrupted). The server-admin policy
(:class:`bot.policy.PolicyGate`: channels, roles, quotas, moderation, shared demo key)
implements the protocol; the composition root installs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import discord
from pydantic import SecretStr

from bot.installs import server_of


class Feature(StrEnum):
    """What a request uses; admins allow channels, roles and quotas per feature."""

    VOICE = "voice"  # cloning voices and speaking with them
    LORA = "lora"  # uploading image sets, training LoRAs, generating with them
    DEMO = "demo"  # the Tadz and Pudgy Penguins demo models


class Action(StrEnum):
    """The concrete step, for quotas that count different things."""

    VOICE_CLONE = "voice_clone"  # a new voice from a sample
    VOICE_SPEAK = "voice_speak"  # spoken text; cost = characters
    LORA_UPLOAD = "lora_upload"  # a new image set
    LORA_TRAIN = "lora_train"  # a training; counted per month
    LORA_GENERATE = "lora_generate"  # one image
    DEMO_GENERATE = "demo_generate"  # one demo image


@dataclass(frozen=True, slots=True)
class GateRequest:
    """Who asks for what, where. ``text`` is the prompt or spoken text (moderated).

    ``bot_permissions`` are the bot's own permissions in the channel
    (``interaction.app_permissions``); when given, the gate refuses up front if the bot
    could not post the result there. :func:`request_for` fills every field from an
    interaction.
    """

    user_id: int
    guild_id: int | None
    channel_id: int
    role_ids: frozenset[int]
    feature: Feature
    action: Action
    cost: int = 1
    text: str | None = None
    is_admin: bool = False
    bot_permissions: discord.Permissions | None = None


def request_for(
    interaction: discord.Interaction[Any],
    feature: Feature,
    action: Action,
    *,
    cost: int = 1,
    text: str | None = None,
) -> GateRequest:
    """The :class:`GateRequest` of a slash command, button or modal interaction.

    In a guild it carries the member's roles, whether they are an administrator, and
    the bot's permissions in the channel; in DMs only the member and the channel.
    """
    user = interaction.user
    # A server where the app is only the member's own install set no rules for it: as DMs.
    guild_id = server_of(interaction)
    in_guild = guild_id is not None and isinstance(user, discord.Member)
    return GateRequest(
        user_id=user.id,
        guild_id=guild_id,
        channel_id=interaction.channel_id or 0,
        role_ids=(
            frozenset(role.id for role in user.roles)
            if in_guild and isinstance(user, discord.Member)
            else frozenset()
        ),
        feature=feature,
        action=action,
        cost=cost,
        text=text,
        # Administrators are not limited by roles or quotas (as the job runner decides).
        is_admin=in_guild
        and isinstance(user, discord.Member)
        and user.guild_permissions.administrator,
        bot_permissions=interaction.app_permissions if in_guild else None,
    )


@dataclass(frozen=True, slots=True)
class Admission:
    """How an admitted request runs.

    ``shared_key`` is the guild's shared Ta-da key when the request is a demo in a
    community demo channel (the member needs no account); ``private_results`` asks for
    results to be shown to the member only instead of posted in the channel.
    """

    shared_key: SecretStr | None = None
    private_results: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


class Gate(Protocol):
    """Admission control for creation requests."""

    async def admit(self, request: GateRequest) -> Admission:
        """Admit the request or raise ``UserFacingError`` saying why not and what to do."""
        ...

    async def record(self, request: GateRequest, *, job_id: str | None = None) -> None:
        """Count an accepted request against the member's quotas; with ``job_id`` it is
        pending until :meth:`settle`."""
        ...

    async def settle(self, job_id: str, *, delivered: bool) -> None:
        """Whether the job's request reached the member (else its count is given back)."""
        ...
