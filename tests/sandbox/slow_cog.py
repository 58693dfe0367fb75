"""A command for the sandbox tests: ``/slow`` answers at once (a deferral), then keeps
working until the test lets it finish, like a training or a voice clone awaiting the
engine."""

from __future__ import annotations

import asyncio
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

DONE = "The slow work is done."


class SlowCog(commands.Cog):
    """``/slow``; :attr:`release` ends its work, :attr:`started` says it is under way."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    @app_commands.command(name="slow")
    async def slow(self, interaction: discord.Interaction[Any]) -> None:
        """Answer at once, then work until released."""
        await interaction.response.defer(thinking=True)
        self.started.set()
        await self.release.wait()
        await interaction.edit_original_response(content=DONE)


async def setup(bot: commands.Bot) -> None:
    """Extension entry point."""
    await bot.add_cog(SlowCog())
