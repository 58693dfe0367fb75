"""``/sandbox``: commands that exist only in the sandbox (``tada-bot`` without a token).

SimCord's browser preview shows one channel at a time; ``/sandbox channel`` asks the
sandbox to show another one (the page is then reloaded). Loaded by name by
:mod:`bot.sandbox` (which reads :attr:`SandboxCog.requests`), never on real Discord.
"""

from __future__ import annotations

import asyncio
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.sandbox import SandboxChannel


class SandboxCog(
    commands.GroupCog, group_name="sandbox", group_description="The sandbox's own controls"
):
    """The ``/sandbox`` command group; ``requests`` is read by the running sandbox."""

    def __init__(self, requests: asyncio.Queue[SandboxChannel]) -> None:
        super().__init__()
        self.requests = requests

    @app_commands.command(name="channel")
    @app_commands.describe(channel="The sandbox channel to show in the page")
    @app_commands.choices(
        channel=[
            app_commands.Choice(name=f"#{item.value}", value=item.value) for item in SandboxChannel
        ]
    )
    async def channel(self, interaction: discord.Interaction[Any], channel: str) -> None:
        """Show another sandbox channel (then reload the page)."""
        target = SandboxChannel(channel)
        await interaction.response.send_message(
            f"Switching the page to #{target.value}: reload the page in a moment.",
            ephemeral=True,
        )
        self.requests.put_nowait(target)


async def setup(bot: commands.Bot) -> None:
    """Extension entry point: the sandbox reads the cog's ``requests``."""
    await bot.add_cog(SandboxCog(asyncio.Queue()))
