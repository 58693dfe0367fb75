"""What ``/jobs`` shows a member: their queued and running jobs, their recent results,
and the one thing they may do about them: cancel a job that has not started.

Reads the job runner's rows and queue (``bot.jobs``); cancelling takes the job out of the
queue first, so a job the runner already picked can never be marked cancelled, and gives
its quota back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import discord

from bot.errors import UserFacingError
from bot.gate import Gate
from bot.jobs import Destination, Job, JobKind, JobNotFound, JobRunner, JobState
from bot.messages import clip

log = logging.getLogger(__name__)

# Recent results shown, newest first; a message's CONTENT_LIMIT bounds the rest.
RECENT = 8
CANCELED = "Cancelled by you before it started; nothing was sent to Ta-da."


def describe(job: Job, *, limit: int = 60) -> str:
    """A job in a few words: what it is and its prompt, text or name (a training: its
    LoRA's)."""
    params = job.params
    detail = (
        params.get("prompt")
        or params.get("text")
        or params.get("lora_name")
        or params.get("voice_name")
        or params.get("name")
        or ""
    )
    detail = " ".join(str(detail).split())
    detail = clip(detail, limit)
    name = job.kind.label
    if job.kind is JobKind.DEMO_GENERATE and params.get("model"):
        name = f"{name} ({params['model']})"
    return f"{name} “{detail}”" if detail else name


def message_link(
    guild_id: int | None, channel_id: int | None, message_id: int | None
) -> str | None:
    """A jump link to a message in a guild channel."""
    if guild_id is None or channel_id is None or message_id is None:
        return None
    return f"https://discord.com/channels/{guild_id}/{channel_id}/{message_id}"


@dataclass(frozen=True, slots=True)
class PanelEntry:
    """One job as ``/jobs`` lists it."""

    job: Job
    # 1 = next to run; only for queued jobs.
    position: int | None = None

    @property
    def where(self) -> str | None:
        """Where to look: the result, or the progress message of a running training."""
        job = self.job
        if job.state is JobState.RUNNING:
            return message_link(job.guild_id, job.channel_id, job.progress_message_id)
        if job.posted_via is Destination.DM:
            return "sent to you by direct message"
        if job.private:
            return "shown to you privately"
        return message_link(job.guild_id, job.channel_id, job.result_message_id)


@dataclass(frozen=True, slots=True)
class Panel:
    """A member's jobs, in the three groups ``/jobs`` shows."""

    queued: tuple[PanelEntry, ...]
    running: tuple[PanelEntry, ...]
    recent: tuple[PanelEntry, ...]


JOB_NOT_YOURS = "That is not one of yours: `/jobs` lists your jobs and their ids."


class JobPanel:
    """Reads and cancels a member's jobs through the bot's job runner."""

    def __init__(self, runner: JobRunner, *, gate: Gate | None = None) -> None:
        self._runner = runner
        # Gives the quota back when a job is cancelled (it never reached Ta-da).
        self._gate = gate

    def __repr__(self) -> str:
        return f"<JobPanel {self._runner!r}>"

    async def panel(self, user_id: int) -> Panel:
        """The member's jobs: waiting (with their place in line), running, recent."""
        jobs = await self._runner.store.for_member(user_id, limit=50)
        queued = [
            PanelEntry(job, await self._runner.position(job.id))
            for job in reversed(jobs)  # oldest first: the order they run in
            if job.state is JobState.QUEUED
        ]
        queued.sort(key=lambda e: e.position if e.position is not None else 1_000_000)
        running = [PanelEntry(job) for job in reversed(jobs) if job.state is JobState.RUNNING]
        recent = [
            PanelEntry(job) for job in jobs if job.state not in (JobState.QUEUED, JobState.RUNNING)
        ][:RECENT]
        return Panel(tuple(queued), tuple(running), tuple(recent))

    async def cancel(self, user_id: int, job_id: str) -> Job:
        """Cancel the member's queued job; a :class:`UserFacingError` when it cannot be."""
        try:
            job = await self._runner.store.get(job_id)
        except JobNotFound as exc:
            raise UserFacingError(JOB_NOT_YOURS) from exc
        if job.user_id != user_id:
            # The same words as for a missing job: whether another's job exists is theirs.
            raise UserFacingError(JOB_NOT_YOURS)
        # Claimed first (in the store, against every process): once claimed here, no
        # runner can start it.
        if job.state is not JobState.QUEUED or not await self._runner.cancel_queued(job_id):
            raise UserFacingError("That job has already started, so it can no longer be cancelled.")
        canceled = await self._runner.store.update(
            job_id, state=JobState.FAILED, error=CANCELED, finished_at=discord.utils.utcnow()
        )
        # Nothing to post for a cancelled job, now or after a restart.
        await self._runner.store.mark_posted(job_id, message_id=None, via=Destination.INTERACTION)
        if self._gate is not None:
            await self._gate.settle(job_id, delivered=False)
        log.info("member %s cancelled queued job %s", user_id, job_id)
        return canceled
