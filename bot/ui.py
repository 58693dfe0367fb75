"""Base classes for the bot's views, modals and command tree: every error goes to
:func:`bot.errors.report_error`, so no interaction is ever left unanswered."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from bot.errors import report_error


class TadaCommandTree(app_commands.CommandTree[Any]):
    """The bot's command tree: one ``on_error`` for every slash command."""

    async def on_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        await report_error(interaction, error)


class TadaView(discord.ui.View):
    """A view whose callback errors reach the member like command errors do."""

    async def on_error(
        self, interaction: discord.Interaction[Any], error: Exception, item: discord.ui.Item[Any]
    ) -> None:
        await report_error(interaction, error)


class TadaModal(discord.ui.Modal):
    """A modal whose submit errors reach the member like command errors do."""

    async def on_error(  # type: ignore[override]  # discord.py's Modal drops ``item``
        self, interaction: discord.Interaction[Any], error: Exception, /
    ) -> None:
        await report_error(interaction, error)
