"""User installs (``[discord] user_installs``, off by default): members add the app to their
own account and use its commands in DMs and in servers where the bot is not, as far as those
servers allow external apps.

The same rules follow them there: their own Ta-da key, consent before a clone, the built-in
word list, the image classifier (explicit images blocked), and results posted as the
interaction's own reply naming who asked. A server that has not added the bot set no rules
for it, so no server's settings or quotas apply there (as in DMs); the commands that only
make sense in a server that added the bot (its admin commands and quotas) stay there.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

# Top-level commands about a server that added the bot, besides those marked guild-only or
# for moderators (default permissions): its quotas.
SERVER_COMMANDS = frozenset({"quota"})


def everywhere() -> tuple[app_commands.AppInstallationType, app_commands.AppCommandContext]:
    """The tree's defaults with user installs on: both installs, every context."""
    return (
        app_commands.AppInstallationType(guild=True, user=True),
        app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True),
    )


def server_only(command: app_commands.Command[Any, ..., Any] | app_commands.Group) -> bool:
    """Whether a top-level command only makes sense in a server that added the bot."""
    return (
        command.name in SERVER_COMMANDS
        or command.guild_only
        or command.default_permissions is not None
    )


def keep_server_commands_in_servers(tree: app_commands.CommandTree[Any]) -> list[str]:
    """Mark the server-only top-level commands as guild install, guild context only (the
    tree's defaults would offer them to user installs too); their names."""
    kept: list[str] = []
    for command in tree.get_commands(type=discord.AppCommandType.chat_input):
        if isinstance(command, app_commands.Command | app_commands.Group) and server_only(command):
            command.allowed_installs = app_commands.AppInstallationType(guild=True, user=False)
            command.allowed_contexts = app_commands.AppCommandContext(
                guild=True, dm_channel=False, private_channel=False
            )
            kept.append(command.name)
    return kept


def server_of(interaction: discord.Interaction[Any]) -> int | None:
    """The server whose settings and quotas apply: the interaction's guild, unless the app
    is there only as the member's own install (``None``, as in DMs)."""
    guild_id = interaction.guild_id
    if guild_id is None:
        return None
    if interaction.is_user_integration() and not interaction.is_guild_integration():
        return None
    return guild_id
