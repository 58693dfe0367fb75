"""``/demo``: try Ta-da's demo models (Tadz, Pudgy Penguins) with a prompt.

In a community demo channel the gate lends the server's shared key, so members need no
account of their own. The image is posted with the prompt and the enhanced prompt.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import TadaBot
from bot.jobs.runner import JobRunner


class DemoCog(commands.GroupCog, group_name="demo", group_description="Demo image models"):
    """The Tadz and Pudgy Penguins demos."""

    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner
        super().__init__()

    @app_commands.command(name="tadz")
    @app_commands.describe(prompt="What Tadz should be doing")
    async def tadz(
        self, interaction: discord.Interaction[Any], prompt: app_commands.Range[str, 1, 1000]
    ) -> None:
        """An image in the Tadz style."""
        await self.runner.submit(interaction, self.runner.demo_request("tadz", prompt))

    @app_commands.command(name="pudgy")
    @app_commands.describe(prompt="What the Pudgy Penguin should be doing")
    async def pudgy(
        self, interaction: discord.Interaction[Any], prompt: app_commands.Range[str, 1, 1000]
    ) -> None:
        """An image in the Pudgy Penguins style."""
        await self.runner.submit(interaction, self.runner.demo_request("pudgy", prompt))


async def setup(bot: commands.Bot) -> None:
    """Load the cog (discord.py extension entry point)."""
    if not isinstance(bot, TadaBot):
        raise TypeError("cogs.demo needs a TadaBot (it reads bot.jobs)")
    await bot.add_cog(DemoCog(bot.jobs))
