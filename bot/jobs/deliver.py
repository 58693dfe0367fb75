"""Posting: a final job's result reaches the member once, and a training's progress shows.

A result goes to the interaction while its token lives, else to the channel as a new
message mentioning the member, else by DM. Each destination is retried on Discord errors;
the row records the delivery once, so a result is never posted twice, and a result not
delivered stays undelivered on the row, where the next start finds it.

Across bot processes (the guarantees, in order of a post):

1. Only the process holding the job's claim posts: :meth:`JobStore.begin_post` is a
   conditional update on ``claimed_by`` and an unexpired lease, made right before each
   post, and it notes the destination (``post_attempt_via``). A process that lost its
   claim (it hung past its lease and another took over) finds out there and posts nothing.
2. The delivery is recorded by one conditional update (``posted_via IS NULL``): of two
   recorders exactly one wins, and a recorded job is never posted again.
3. A process killed between Discord taking a post and the record (a window of one
   database round trip) leaves the post "in doubt". Whoever takes the job over posts it
   again, to the same destination when it is the channel or a DM, with the same nonce
   (derived from the job id, ``enforce_nonce``): Discord then answers with the message
   already made instead of a second one, within its nonce window (minutes; a takeover
   comes after ``lease_seconds``, 30 s by default). An interaction follow-up has no nonce,
   so one in doubt is sent again as a channel (or DM) post with the nonce: at least once.
   That one case may show twice; every other path posts exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
import zlib
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import discord

from bot.config import JobsConfig
from bot.jobs.buttons import marks_result_of
from bot.jobs.deps import JobServices
from bot.jobs.models import FINAL_STATES, Destination, Job, JobKind, JobState
from bot.jobs.models import aware as _aware
from bot.jobs.render import Outgoing, ProgressImage, render, stopped_progress
from bot.jobs.store import JobNotFound, JobStore
from bot.media import IMAGE_SUFFIXES, MediaRejected
from bot.messages import DEFAULT_FILE_LIMIT, requester_only
from bot.policy.settings import ExplicitImages
from bot.safety.service import WITHHELD_UNREADABLE, may_post
from bot.store.models import utcnow
from bot.tada.errors import TadaError, TadaProtocolError
from bot.voice_channel import Clip, QueueFull, VoiceChannelPlayer
from bot.voice_message import VoiceMessageError, make_voice_message_async, post_voice_message

log = logging.getLogger(__name__)

# Under a speech card whose audio went out as a voice message just before it.
VOICE_MESSAGE_NOTE = "🔊 The speech is the voice message above."
# Discord invalidates interaction tokens after 15 minutes; stop using them a bit before.
TOKEN_LIFETIME = timedelta(minutes=14)
# How many of a channel's latest messages a follow-up in doubt is looked for in (by the
# job's button, not by time: Discord's clock is not ours).
DOUBT_SCAN_MESSAGES = 100
# Pauses before the later delivery rounds when no destination took a result.
REDELIVERY_DELAYS = (60.0, 300.0, 1800.0)
# What the member's "accepted" note becomes once the outcome is posted.
OUTCOME_NOTES = {
    JobState.FINISHED: "✅ Done: the result is posted.",
    JobState.FAILED: "❌ Failed: the reason is posted.",
    JobState.INTERRUPTED: "⚠️ Interrupted: it can be retried from the posted message.",
    JobState.QUEUED: "⏳ Accepted.",
    JobState.RUNNING: "⏳ Accepted.",
}
# The jobs whose result is a generated image, classified before it is posted.
IMAGE_KINDS = frozenset({JobKind.LORA_GENERATE, JobKind.DEMO_GENERATE})
# Runs a coroutine as one of the runner's tasks (stopped with the runner).
Spawn = Callable[[Coroutine[Any, Any, None], str], None]


def post_nonce(job_id: str) -> int:
    """The nonce of a job's channel and DM posts (Discord takes up to 25 characters)."""
    return int(job_id[:15], 16) if len(job_id) >= 15 else zlib.crc32(job_id.encode())


class Delivery:
    """Posts results and progress for one runner (built by :class:`~bot.jobs.runner.JobRunner`)."""

    def __init__(
        self,
        *,
        client: discord.Client,
        services: JobServices,
        store: JobStore,
        config: JobsConfig,
        player: VoiceChannelPlayer | None,
        interactions: dict[str, discord.Interaction[Any]],
        spawn: Spawn,
        owner: str,
        done: Callable[[str], None],
    ) -> None:
        self.client = client
        self.services = services
        self.store = store
        self.config = config
        self.player = player
        # The runner's live interactions of jobs asked in this process (shared).
        self._interactions = interactions
        self._spawn = spawn
        # This process's claims (see JobStore.claim); ``done`` tells the runner a job is no
        # longer this process's to work on (posted, or its claim is gone).
        self._owner = owner
        self._done = done
        self._delivering: set[str] = set()

    def live_interaction(self, job_id: str) -> discord.Interaction[Any] | None:
        interaction = self._interactions.get(job_id)
        if interaction is None:
            return None
        # Discord's clock (the interaction's snowflake time), not ours.
        if discord.utils.utcnow() - interaction.created_at > TOKEN_LIFETIME:
            self._interactions.pop(job_id, None)
            return None
        return interaction

    async def deliver(self, job_id: str, round_: int = 0) -> None:
        """Post a final job's result once, trying each destination with retries."""
        if job_id in self._delivering:
            return
        self._delivering.add(job_id)
        try:
            try:
                job = await self.store.get(job_id)
            except JobNotFound:
                return  # the member asked the bot to forget them: nothing to post
            if job.posted:
                if job.state in FINAL_STATES:
                    await self.services.gate.settle(
                        job.id, delivered=job.state is JobState.FINISHED
                    )
                self._done(job.id)
                return
            files, note = await self._artifacts(job)
            # No generated image reaches Discord unclassified: one judged explicit where
            # it may not be posted ends the job, privately, before anything is counted.
            job, files, note = await self._screen(job, files, note)
            if job.state in FINAL_STATES:
                # Only what the member got counts against their quota.
                await self.services.gate.settle(job.id, delivered=job.state is JobState.FINISHED)
            doubt = await self.store.in_doubt(job.id)
            if files:
                await self._play_in_voice(job, files[0][1])
            if files and await self._as_voice_message(job, files[0][1]):
                # The voice message holds the audio; the card below says where it is.
                files, note = (), VOICE_MESSAGE_NOTE
            outgoing = render(job, files, note, expressions=await self._expressions(job))
            destinations: tuple[Destination, ...] = (
                (Destination.INTERACTION, Destination.DM)
                if job.private
                else (Destination.INTERACTION, Destination.CHANNEL, Destination.DM)
            )
            if doubt is not None and doubt.via is Destination.INTERACTION and not job.private:
                # A follow-up has no nonce: the message, if Discord took it, is found in
                # the channel by its buttons (an ephemeral one cannot be: sent again).
                found = await self._posted_in_channel(job)
                if found is not None:
                    log.warning("job %s: its follow-up in doubt is posted; recorded", job.id)
                    await self.store.mark_posted(job.id, message_id=found, via=doubt.via)
                    self._done(job.id)
                    return
            if doubt is not None:
                # A post begun by a process that died before recording it: again where
                # Discord can tell it is the same post (the nonce), never as a follow-up.
                log.warning("job %s: a post to %s is in doubt; posting again", job.id, doubt.via)
                first = doubt.via if doubt.via is not Destination.INTERACTION else None
                rest = [d for d in destinations if d not in (first, Destination.INTERACTION)]
                destinations = tuple([first, *rest] if first is not None else rest)
            for destination in destinations:
                try:
                    await self.store.begin_post(job.id, self._owner, destination)
                except JobNotFound:
                    # Its claim lapsed: the next sweep (here or elsewhere) claims it again.
                    log.info("job %s: no longer this process's to post", job.id)
                    self._done(job.id)
                    return
                posting = time.perf_counter()
                message_id = await self._post_with_retries(job, destination, outgoing)
                if message_id is not None:
                    await self.store.mark_posted(job.id, message_id=message_id, via=destination)
                    self.services.metrics.delivered(
                        job.kind.value,
                        destination.value,
                        # The store's clock, which wrote created_at (not Discord's).
                        (utcnow() - job.created_at).total_seconds(),
                        time.perf_counter() - posting,
                    )
                    self._done(job.id)
                    await self._tidy_status(job)
                    return
                # Discord refused it: not in doubt, the next destination (or round) may go.
                await self.store.end_attempt(job.id, self._owner)
            log.error("job %s: no destination took the result; trying again later", job.id)
            if round_ < len(REDELIVERY_DELAYS):
                self._spawn(self._redeliver(job_id, round_ + 1), f"redeliver {job_id}")
        finally:
            self._delivering.discard(job_id)

    async def show_progress(self, job: Job, text: str, image: ProgressImage | None = None) -> None:
        """Edit the training's progress message (post it first); best effort.

        ``image`` (a new validation image) replaces the one shown; without it an edit
        changes the text only and keeps the image already there.
        """
        # Edits replace the attachments; a first post attaches the file.
        shown: dict[str, Any] = (
            {} if image is None else {"embed": image.embed(), "attachments": [image.file()]}
        )
        try:
            # A private job's progress is its interaction's note; a failure made private
            # later still ends the message already posted in the channel.
            if job.private and job.progress_message_id is None:
                interaction = self.live_interaction(job.id)
                if interaction is not None:
                    await interaction.edit_original_response(content=text, **shown)
                return
            channel = self._channel(job)
            if channel is None:
                return
            if job.progress_message_id is not None:
                try:
                    await channel.get_partial_message(job.progress_message_id).edit(
                        content=text, **shown
                    )
                    return
                except discord.NotFound:
                    pass  # deleted by someone: post a new one below
            posted: dict[str, Any] = (
                {} if image is None else {"embed": image.embed(), "file": image.file()}
            )
            message = await channel.send(
                text, allowed_mentions=discord.AllowedMentions.none(), **posted
            )
            await self.store.update(job.id, progress_message_id=message.id)
        except discord.HTTPException as exc:
            # Progress is a courtesy; the result itself goes through _deliver's retries.
            log.warning("could not update progress of job %s: %s", job.id, exc)

    async def end_progress(self, job_id: str) -> None:
        """A training no longer followed: its progress message says so (never left on
        "training")."""
        job = await self.store.get(job_id)
        if job.progress_message_id is None and not job.private:
            return  # no progress was shown
        await self.show_progress(job, stopped_progress(job))

    async def _webhook(self, job: Job) -> discord.Webhook | None:
        """The interaction's follow-up webhook while its token is valid (after a restart too)."""
        interaction = self.live_interaction(job.id)
        if interaction is not None:
            return interaction.followup
        kept = await self.store.interaction_token(job.id)
        if kept is None:
            return None
        application_id, token, issued = kept
        if discord.utils.utcnow() - _aware(issued) > TOKEN_LIFETIME:
            return None
        # What ``Interaction.followup`` builds: an application webhook, so ephemeral
        # follow-ups stay possible after a restart.
        payload = {"id": application_id, "type": 3, "token": token.get_secret_value()}
        return discord.Webhook.from_state(data=payload, state=self.client._connection)  # type: ignore[arg-type]

    def _channel(self, job: Job) -> discord.PartialMessageable | None:
        if job.channel_id is None:
            return None
        return self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)

    async def _posted_in_channel(self, job: Job) -> int | None:
        """The id of the bot's message among the channel's latest that carries this job's
        Again (or Delete) button, if there is one (best effort: ``None`` when the channel's history
        cannot be read, or the message has scrolled past :data:`DOUBT_SCAN_MESSAGES`)."""
        channel = self._channel(job)
        me = self.client.user
        if channel is None or me is None:
            return None
        try:
            async for message in channel.history(limit=DOUBT_SCAN_MESSAGES):
                if message.author.id == me.id and any(
                    marks_result_of(getattr(child, "custom_id", None), job.id)
                    for row in message.components
                    for child in getattr(row, "children", ())
                ):
                    return message.id
        except discord.HTTPException as exc:
            log.warning("job %s: the channel's history cannot be read: %s", job.id, exc)
        return None

    def _file_limit(self, job: Job) -> int:
        guild = self.client.get_guild(job.guild_id) if job.guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_FILE_LIMIT

    async def _artifacts(self, job: Job) -> tuple[tuple[tuple[str, bytes], ...], str | None]:
        """The result's file, downloaded, or a note saying why it is not attached."""
        result = job.result or {}
        url = result.get("url")
        if job.state is not JobState.FINISHED or not url:
            return (), None
        limit = self._file_limit(job)
        suffix = PurePosixPath(urlsplit(str(url)).path).suffix.lower()
        if job.kind is JobKind.VOICE_SPEAK:
            name = f"speech.{result.get('format') or suffix.lstrip('.') or 'mp3'}"
        else:
            name = f"image{suffix if suffix in IMAGE_SUFFIXES else '.png'}"
        try:
            chunks = [c async for c in self.services.tada.iter_download(str(url), max_bytes=limit)]
        except TadaProtocolError:
            return (), f"The file is larger than this server's upload limit: {url}"
        except TadaError as exc:
            log.warning("could not download the result of job %s: %s", job.id, exc)
            return (), f"The file could not be fetched from Ta-da; it is here: {url}"
        return ((name, b"".join(chunks)),), None

    def age_restricted(self, channel_id: int | None) -> bool:
        """Whether Discord marks the channel (or a thread's parent) age-restricted; a
        channel the bot cannot see counts as not."""
        if channel_id is None:
            return False
        channel = self.client.get_channel(channel_id)
        is_nsfw = getattr(channel, "is_nsfw", None)
        return bool(is_nsfw()) if callable(is_nsfw) else False

    async def withheld_note(self, job: Job, image: bytes | None, *, what: str) -> str | None:
        """``None`` when ``image`` may be shown where ``job`` was asked; else the member's
        private note. ``image`` ``None``: an image that could not be fetched, which is not
        linked unclassified either (unless no classifier is configured)."""
        safety = self.services.safety
        if safety.classifier is None:
            return None
        if image is None:
            return WITHHELD_UNREADABLE
        verdict = await safety.classify(image, what=what)
        setting = (
            (await self.services.policy.settings(job.guild_id)).explicit_images
            if job.guild_id is not None
            else ExplicitImages.BLOCKED
        )
        return may_post(verdict, setting, age_restricted=self.age_restricted(job.channel_id))

    async def _screen(
        self, job: Job, files: tuple[tuple[str, bytes], ...], note: str | None
    ) -> tuple[Job, tuple[tuple[str, bytes], ...], str | None]:
        """The job, files and note to post once a finished image has been classified."""
        if job.kind not in IMAGE_KINDS or job.state is not JobState.FINISHED:
            return job, files, note
        withheld = await self.withheld_note(
            job, files[0][1] if files else None, what=f"job {job.id}"
        )
        if withheld is None:
            return job, files, note
        log.info("job %s: its image is withheld (%s)", job.id, withheld[:40])
        failed = await self.store.update(
            job.id,
            state=JobState.FAILED,
            error=withheld,
            # Told to the member alone (ephemeral or DM), never in the channel.
            private=True,
            result={**(job.result or {}), "withheld": True, "url": None},
        )
        return failed, (), None

    async def _play_in_voice(self, job: Job, audio: bytes) -> None:
        """Queue a ``/voice say`` speech in its voice channel, once (best effort: the
        speech is posted in the text channel in any case)."""
        channel_id = job.params.get("play_in")
        result = job.result or {}
        if (
            channel_id is None
            or self.player is None
            or job.guild_id is None
            or job.state is not JobState.FINISHED
            or result.get("played")
        ):
            return
        if self.client.get_guild(job.guild_id) is None:
            # The bot left the guild (or a process that runs every shard has not seen it
            # yet): no voice connection. The speech is posted in the text channel as usual.
            log.info(
                "job %s: guild %s is not in this process's cache; not played", job.id, job.guild_id
            )
            return
        await self.store.update(job.id, result={**result, "played": True})
        clip = Clip(audio, int(channel_id), job.user_id, label=f"job {job.id}")
        try:
            self.player.enqueue(job.guild_id, clip)
        except QueueFull:
            log.warning("job %s: the voice queue of guild %s is full", job.id, job.guild_id)

    async def _expressions(self, job: Job) -> bool:
        """Whether the post gets buttons that make it a soundboard sound, emoji or sticker
        (a finished result posted in a server that turned them on)."""
        if job.state is not JobState.FINISHED or job.private or job.guild_id is None:
            return False
        return (await self.services.policy.settings(job.guild_id)).expressions

    async def _as_voice_message(self, job: Job, audio: bytes) -> bool:
        """Post a speech's audio as a voice message in its channel when the server asks for
        voice messages and the bot may post one; whether it is there (posted now or by an
        earlier delivery round). Any failure means the MP3 attachment instead."""
        if (
            job.kind is not JobKind.VOICE_SPEAK
            or job.state is not JobState.FINISHED
            or job.private
            or job.channel_id is None
            or job.guild_id is None
        ):
            return False
        if (job.result or {}).get("voice_message_id"):
            return True
        if not (await self.services.policy.settings(job.guild_id)).voice_messages:
            return False
        channel = self.client.get_channel(job.channel_id)
        if isinstance(channel, discord.abc.GuildChannel | discord.Thread):
            allowed = channel.permissions_for(channel.guild.me)
            if not (allowed.send_voice_messages and allowed.attach_files):
                return False
        try:
            voice_message = await make_voice_message_async(audio)
            message_id = await post_voice_message(self.client, job.channel_id, voice_message)
        except (VoiceMessageError, MediaRejected, OSError, subprocess.SubprocessError) as exc:
            log.warning("job %s: no voice message (%s); posting the MP3", job.id, exc)
            return False
        except discord.HTTPException as exc:
            log.warning("job %s: Discord refused the voice message: %s", job.id, exc)
            return False
        current = (await self.store.get(job.id)).result or {}
        await self.store.update(job.id, result={**current, "voice_message_id": message_id})
        return True

    async def _redeliver(self, job_id: str, round_: int) -> None:
        """Another delivery round after a pause (Discord outage); the next start retries
        too, since the row stays unposted."""
        await asyncio.sleep(REDELIVERY_DELAYS[round_ - 1])
        await self.deliver(job_id, round_)

    async def _post_with_retries(
        self, job: Job, destination: Destination, outgoing: Outgoing
    ) -> int | None:
        """The posted message's id, or ``None`` when this destination cannot take it."""
        delay = self.config.post_backoff_seconds
        for attempt in range(1, self.config.post_attempts + 1):
            try:
                return await self._post(job, destination, outgoing)
            except (discord.Forbidden, discord.NotFound):
                return None  # gone or not allowed: the next destination
            except discord.HTTPException as exc:
                if exc.status < 500 and exc.status != 429:
                    log.warning("job %s: %s refused the result: %s", job.id, destination, exc)
                    return None
                await self.store.count_attempt(job.id)
                log.warning(
                    "job %s: posting to %s failed (attempt %d): %s",
                    job.id,
                    destination,
                    attempt,
                    exc,
                )
            except (LookupError, ValueError):
                return None  # no such destination for this job (or not for this message)
            if attempt < self.config.post_attempts:
                await asyncio.sleep(delay)
                delay *= 2
        return None

    async def _post(self, job: Job, destination: Destination, outgoing: Outgoing) -> int:
        mentions = requester_only(job.user_id)
        kwargs: dict[str, Any] = {"content": outgoing.content, "allowed_mentions": mentions}
        if outgoing.embed is not None:
            kwargs["embed"] = outgoing.embed
        if outgoing.files:
            kwargs["files"] = outgoing.discord_files()
        view = outgoing.view()
        if view is not None:
            kwargs["view"] = view
        if destination is Destination.INTERACTION:
            webhook = await self._webhook(job)
            if webhook is None:
                raise LookupError("no live interaction")
            sent = await webhook.send(wait=True, ephemeral=job.private, **kwargs)
            return sent.id
        # The same nonce for every post of this job: Discord (enforce_nonce) answers a
        # repeat with the message it already made (a post in doubt after a crash).
        kwargs["nonce"] = post_nonce(job.id)
        if destination is Destination.CHANNEL:
            channel = self._channel(job)
            if channel is None:
                raise LookupError("no channel")
            return (await channel.send(**kwargs)).id
        user = self.client.get_user(job.user_id) or await self.client.fetch_user(job.user_id)
        return (await user.send(**kwargs)).id

    async def _tidy_status(self, job: Job) -> None:
        """Replace the "accepted" note of a quick job by its outcome (best effort): "done"
        only when it succeeded, never above a failure."""
        interaction = self._interactions.pop(job.id, None)
        if interaction is None or job.kind is JobKind.LORA_TRAIN:
            return
        if discord.utils.utcnow() - interaction.created_at > TOKEN_LIFETIME:
            return
        with contextlib.suppress(discord.HTTPException):
            await interaction.edit_original_response(content=OUTCOME_NOTES[job.state])
