"""``/jobs``: a member's queued and running jobs, with cancel buttons, and recent results.

Thin: :class:`bot.jobs.panel.JobPanel` reads and cancels; this cog renders. Ephemeral:
nobody else needs to see a member's queue.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import TadaBot
from bot.errors import UserFacingError
from bot.jobs import JobState
from bot.jobs.panel import JobPanel, Panel, PanelEntry, describe
from bot.messages import CONTENT_LIMIT, clip_lines
from bot.ui import TadaView

# Discord allows 25 buttons on a message (5 rows of 5).
MAX_BUTTONS = 25

STATE_MARKS: dict[JobState, str] = {
    JobState.FINISHED: "✅",
    JobState.FAILED: "❌",
    JobState.INTERRUPTED: "⚠️",
}


def _link(entry: PanelEntry, label: str) -> str:
    where = entry.where
    if where is None:
        return ""
    return f" · [{label}]({where})" if where.startswith("https://") else f" · {where}"


def _line(entry: PanelEntry) -> str:
    job = entry.job
    fmt = discord.utils.format_dt
    if job.state is JobState.QUEUED:
        place = f"number {entry.position} in line" if entry.position else "waiting"
        return f"{describe(job)} · {place} · asked {fmt(job.created_at, 'R')}"
    if job.state is JobState.RUNNING:
        since = fmt(job.started_at or job.created_at, "R")
        return f"{describe(job)} · running since {since}{_link(entry, 'progress')}"
    mark = STATE_MARKS.get(job.state, "•")
    text = f"{mark} {describe(job)} · {fmt(job.created_at, 'R')}"
    if job.state is JobState.FAILED and job.error:
        reason = " ".join(job.error.split())
        text += f" · {reason[:120]}{'…' if len(reason) > 120 else ''}"
    elif job.state is JobState.INTERRUPTED:
        text += " · interrupted by a restart (retry from its message)"
    return text + _link(entry, "result")


def render_panel(panel: Panel) -> str:
    """The text of ``/jobs``."""
    if not (panel.queued or panel.running or panel.recent):
        return (
            "You have no jobs yet. Try `/demo tadz`, `/voice speak` or `/lora generate`; "
            "what you ask for shows up here."
        )
    lines = ["**Your jobs**"]
    if panel.queued:
        lines.append("**Waiting**")
        lines += [f"{n}. {_line(e)}" for n, e in enumerate(panel.queued, start=1)]
    if panel.running:
        lines.append("**Running**")
        lines += [f"• {_line(e)}" for e in panel.running]
    if panel.recent:
        lines.append("**Recent**")
        lines += [_line(e) for e in panel.recent]
    text = "\n".join(lines)
    return clip_lines(text, CONTENT_LIMIT)


class CancelButton(discord.ui.Button["JobsView"]):
    """Cancels one queued job, then shows the panel again."""

    def __init__(self, number: int, job_id: str) -> None:
        super().__init__(
            label=f"Cancel {number}",
            style=discord.ButtonStyle.danger,
            custom_id=f"jobs:cancel:{job_id}",
        )
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        view = self.view
        assert view is not None
        await view.panel.cancel(interaction.user.id, self.job_id)
        fresh = await view.panel.panel(interaction.user.id)
        await interaction.response.edit_message(
            content="Cancelled.\n" + render_panel(fresh),
            view=JobsView(view.panel, view.owner_id, fresh),
        )


class JobsView(TadaView):
    """A cancel button per queued job (numbered like the list); the asker's only."""

    def __init__(self, panel: JobPanel, owner_id: int, shown: Panel) -> None:
        super().__init__(timeout=300)
        self.panel = panel
        self.owner_id = owner_id
        for number, entry in enumerate(shown.queued[:MAX_BUTTONS], start=1):
            self.add_item(CancelButton(number, entry.job.id))

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        if interaction.user.id != self.owner_id:
            raise UserFacingError("These buttons belong to someone else's `/jobs`.")
        return True


class JobsCog(commands.Cog):
    """The ``/jobs`` command."""

    def __init__(self, panel: JobPanel) -> None:
        self.panel = panel

    @app_commands.command(name="jobs")
    async def jobs(self, interaction: discord.Interaction[Any]) -> None:
        """Your queued and running jobs (cancel the ones waiting) and your recent results."""
        shown = await self.panel.panel(interaction.user.id)
        view = JobsView(self.panel, interaction.user.id, shown) if shown.queued else None
        if view is None:
            await interaction.response.send_message(render_panel(shown), ephemeral=True)
        else:
            await interaction.response.send_message(render_panel(shown), view=view, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    """Extension entry point."""
    if not isinstance(bot, TadaBot):
        raise TypeError("cogs.jobs needs a TadaBot (it reads bot.job_panel)")
    await bot.add_cog(JobsCog(bot.job_panel))
