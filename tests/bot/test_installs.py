"""User installs (``[discord] user_installs``): what the synced commands tell Discord, and how
a command used through a member's own install is treated (issue 27, item 4).

The payload is the one discord.py PUTs to Discord (SimCord records it). Discord's values:
``integration_types`` 0 = server install, 1 = user install; ``contexts`` 0 = server,
1 = the bot's DM, 2 = group DMs and other DMs.
"""

from __future__ import annotations

from typing import Any

import discord
import httpx
from fastapi import FastAPI

from bot.config import BotConfig, DiscordConfig
from bot.gate import Action, Feature, request_for
from bot.installs import server_of
from tests.bot.conftest import synced_payload

SERVER_ONLY = {"tada-admin", "quota"}


async def synced_commands(config: BotConfig, api: httpx.AsyncClient) -> dict[str, Any]:
    """The command payloads the bot syncs at start-up, by name."""
    return {c["name"]: c for c in await synced_payload(config, api)}


async def test_commands_carry_installs_and_contexts_only_when_the_operator_opts_in(
    bot_config: BotConfig, engine: tuple[FastAPI, httpx.AsyncClient]
) -> None:
    _, api = engine
    off = await synced_commands(bot_config, api)
    assert SERVER_ONLY | {"voice", "lora", "tada"} <= set(off)
    # Off (the default): no install types are sent (Discord keeps a server install only),
    # and contexts only where a command was marked guild-only, as before.
    assert all(c.get("integration_types") is None for c in off.values())
    contexts = {name: c.get("contexts") for name, c in off.items()}
    assert contexts == {name: [0] if name == "tada-admin" else None for name in off}

    config = bot_config.model_copy(update={"discord": DiscordConfig(user_installs=True)})
    on = await synced_commands(config, api)
    assert set(on) == set(off)
    for name, command in on.items():
        if name in SERVER_ONLY:
            # A server's own settings and quotas: only where the server added the bot.
            assert (command["integration_types"], command["contexts"]) == ([0], [0]), name
        else:
            assert command["integration_types"] == [0, 1], name
            assert command["contexts"] == [0, 1, 2], name


class _Interaction:
    """The parts of an interaction :func:`server_of` and :func:`request_for` read."""

    def __init__(self, guild_id: int | None, owners: dict[int, int], user: Any) -> None:
        self.guild_id = guild_id
        self.channel_id = 55
        self.user = user
        self._integration_owners = owners
        self.app_permissions = discord.Permissions.none()

    is_guild_integration = discord.Interaction.is_guild_integration
    is_user_integration = discord.Interaction.is_user_integration


class _User:
    id = 7


def test_a_server_without_the_bot_counts_as_a_dm() -> None:
    user = _User()
    # The member's own install in a server that never added the bot: no server rules.
    foreign: Any = _Interaction(42, {1: user.id}, user)
    assert server_of(foreign) is None
    request = request_for(foreign, Feature.VOICE, Action.VOICE_SPEAK, text="hi")
    assert request.guild_id is None and request.bot_permissions is None
    # A server that added the bot (whether or not the member also installed it): its rules.
    both: Any = _Interaction(42, {0: 42, 1: user.id}, user)
    assert server_of(both) == 42
    # A server interaction without install data (as SimCord and older payloads send).
    plain: Any = _Interaction(42, {}, user)
    assert server_of(plain) == 42
    assert server_of(_Interaction(None, {1: user.id}, user)) is None  # type: ignore[arg-type]
