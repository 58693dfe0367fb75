"""``/quota``: what a member may still do on this server today, and when it resets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import TadaBot
from bot.policy import FeatureStatus, PolicyService
from bot.policy.settings import FEATURE_NAMES, limit_name


def render_status(statuses: list[FeatureStatus], *, now: datetime) -> str:
    """One line per feature: allowed or not, what is left and when it resets."""
    lines = ["**What you can still do on this server**"]
    for status in statuses:
        name = FEATURE_NAMES[status.feature]
        if not status.allowed:
            roles = ", ".join(f"<@&{r}>" for r in status.roles)
            lines.append(f"**{name}**: only for members with {roles}.")
            continue
        parts = []
        if status.exempt:
            parts.append("no limits for server administrators")
        for allowance in status.allowances:
            what = limit_name(allowance.limit, allowance.amount)
            parts.append(
                f"{allowance.left:,} of {allowance.amount:,} {what} left, "
                f"resets {discord.utils.format_dt(allowance.resets_at, 'R')}"
            )
        if status.cooldown is not None:
            if status.cooldown.ready_at is not None and status.cooldown.waiting(now):
                parts.append(
                    f"next request {discord.utils.format_dt(status.cooldown.ready_at, 'R')}"
                )
            else:
                parts.append(f"{status.cooldown.seconds} s between requests")
        if not parts:
            parts.append("no limits")
        where = ""
        if status.channels:
            where = " (in " + ", ".join(f"<#{c}>" for c in status.channels) + ")"
        lines.append(f"**{name}**{where}: " + "; ".join(parts) + ".")
    return "\n".join(lines)


class QuotaCog(commands.Cog):
    """The ``/quota`` command."""

    def __init__(self, policy: PolicyService) -> None:
        self.policy = policy

    @app_commands.command(name="quota")
    async def quota(self, interaction: discord.Interaction[Any]) -> None:
        """What you have left today on this server, and when it resets."""
        user = interaction.user
        if interaction.guild_id is None or not isinstance(user, discord.Member):
            await interaction.response.send_message(
                "In direct messages you use your own Ta-da account, with no server limits. "
                "Run `/quota` in a server to see its limits.",
                ephemeral=True,
            )
            return
        statuses = await self.policy.gate.status(
            interaction.guild_id,
            user.id,
            frozenset(role.id for role in user.roles),
            is_admin=user.guild_permissions.administrator,
        )
        await interaction.response.send_message(
            render_status(statuses, now=self.policy.gate.now()), ephemeral=True
        )


async def setup(bot: commands.Bot) -> None:
    """Extension entry point."""
    if not isinstance(bot, TadaBot):
        raise TypeError("cogs.quota needs a TadaBot (it reads bot.services.policy)")
    await bot.add_cog(QuotaCog(bot.services.policy))
