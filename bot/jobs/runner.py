"""The job runner: members' requests run off the interaction path, fairly, and their results
reach the channel they came from, across bot restarts.

Life of a request (:meth:`JobRunner.submit`): the gate admits it, the interaction is
deferred, a job row is saved (before any Ta-da call), the member is told their place in
the queue. A slot frees up (:class:`~bot.jobs.fairness.FairQueue`: bounded, round-robin
across members), the Ta-da call runs, its answer is saved on the row, and the result is
posted: to the interaction while its token lives, else to the channel as a new message
mentioning the member, else by DM. Each destination is retried on Discord errors; the row
records the delivery once, so a result is never posted twice, and a result not delivered
stays undelivered on the row, where the next start finds it.

Trainings outlive interactions: after the start call the runner polls the training and
edits one progress message, then posts the result with a mention. :meth:`JobRunner.start`
(at bot start-up) resumes all of it: queued jobs are queued again, trainings watched
again, generations the engine finished are posted, generations cut off are posted as
interrupted with a Retry button.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import subprocess
import time
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import discord
from pydantic import SecretStr

from bot.errors import UserFacingError, caused_by_member, reply_for
from bot.gate import Action, Admission, Feature, GateRequest, request_for
from bot.jobs.deps import JobServices
from bot.jobs.fairness import FairQueue
from bot.jobs.models import FINAL_STATES, Destination, Job, JobKind, JobRequest, JobState
from bot.jobs.models import aware as _aware
from bot.jobs.render import (
    Outgoing,
    render,
    stopped_progress,
    training_progress,
)
from bot.jobs.store import JobNotFound, JobStore
from bot.media import IMAGE_SUFFIXES, MediaRejected
from bot.messages import DEFAULT_FILE_LIMIT, requester_only
from bot.readiness import is_test_model
from bot.store.models import utcnow
from bot.tada import TadaClient
from bot.tada.errors import (
    NotFound,
    ServiceUnavailable,
    TadaError,
    TadaProtocolError,
    TadaTimeout,
    TadaTransportError,
)
from bot.tada.models import LoraTraining, TrainingStatus
from bot.voice_channel import Clip, QueueFull, VoiceChannelPlayer
from bot.voice_message import VoiceMessageError, make_voice_message_async, post_voice_message

log = logging.getLogger(__name__)

# Under a speech card whose audio went out as a voice message just before it.
VOICE_MESSAGE_NOTE = "🔊 The speech is the voice message above."
# Discord invalidates interaction tokens after 15 minutes; stop using them a bit before.
TOKEN_LIFETIME = timedelta(minutes=14)
# A generation listed by Ta-da within this much before the job started is still ours
# (the bot's and the engine's clocks may differ slightly).
CLOCK_SKEW = timedelta(seconds=10)
FEATURE_OF = {
    JobKind.VOICE_SPEAK: (Feature.VOICE, Action.VOICE_SPEAK),
    JobKind.LORA_TRAIN: (Feature.LORA, Action.LORA_TRAIN),
    JobKind.LORA_GENERATE: (Feature.LORA, Action.LORA_GENERATE),
    JobKind.DEMO_GENERATE: (Feature.DEMO, Action.DEMO_GENERATE),
}
# Pauses before the later delivery rounds when no destination took a result.
REDELIVERY_DELAYS = (60.0, 300.0, 1800.0)
# Generations Ta-da lists (so a lost answer can be found); demos are not listed.
LISTED_KINDS = frozenset({JobKind.VOICE_SPEAK, JobKind.LORA_GENERATE})
# What the member's "accepted" note becomes once the outcome is posted.
OUTCOME_NOTES = {
    JobState.FINISHED: "✅ Done: the result is posted.",
    JobState.FAILED: "❌ Failed: the reason is posted.",
    JobState.INTERRUPTED: "⚠️ Interrupted: it can be retried from the posted message.",
    JobState.QUEUED: "⏳ Accepted.",
    JobState.RUNNING: "⏳ Accepted.",
}
FINAL_TRAINING = frozenset(
    {TrainingStatus.SUCCEEDED, TrainingStatus.FAILED, TrainingStatus.CANCELED}
)


def gate_request(interaction: discord.Interaction[Any], request: JobRequest) -> GateRequest:
    """The gate's view of a job request made through ``interaction``."""
    feature, action = FEATURE_OF[request.kind]
    # request_for also carries the bot's own channel permissions (app_permissions), so the
    # gate refuses up front where the result could not be posted.
    return request_for(interaction, feature, action, text=request.text, cost=request.cost)


async def admit(
    services: JobServices, interaction: discord.Interaction[Any], request: GateRequest
) -> tuple[Admission, TadaClient]:
    """Ask the gate, then pick the key: the shared demo key it lent, or the member's own."""
    admission = await services.gate.admit(request)
    tada = await services.accounts.client_for(interaction.user.id, shared_key=admission.shared_key)
    return admission, tada


class JobRunner:
    """Runs, watches and posts jobs for one bot; build it with the bot, start it in
    ``setup_hook``, stop it when the bot closes."""

    def __init__(
        self,
        *,
        client: discord.Client,
        services: JobServices,
        player: VoiceChannelPlayer | None = None,
    ) -> None:
        self.client = client
        self.services = services
        # Plays speech asked with ``/voice say`` in the member's voice channel.
        self.player = player
        self.config = services.config.jobs
        self.store = JobStore(services.store, services.members.keys)
        self.queue = FairQueue(
            max_running=self.config.max_concurrent, per_member=self.config.per_member
        )
        # Live interactions of jobs asked in this process (their follow-up webhook).
        self._interactions: dict[str, discord.Interaction[Any]] = {}
        self._members: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watching: set[str] = set()
        self._delivering: set[str] = set()

    def __repr__(self) -> str:
        return f"<JobRunner queued={len(self.queue)} running={self.queue.running}>"

    # ------------------------------------------------------------------ requests

    def speak_request(
        self,
        voice_id: str,
        text: str,
        voice_name: str | None = None,
        *,
        play_in: int | None = None,
    ) -> JobRequest:
        """Speech with a voice (``play_in``: also played in that voice channel)."""
        params: dict[str, Any] = {"voice_id": voice_id, "text": text, "voice_name": voice_name}
        if play_in is not None:
            params["play_in"] = play_in
        return JobRequest(JobKind.VOICE_SPEAK, params, text=text)

    def generate_request(
        self, lora_id: str, prompt: str, lora_name: str | None = None
    ) -> JobRequest:
        """An image from a LoRA."""
        params = {"lora_id": lora_id, "prompt": prompt, "lora_name": lora_name}
        return JobRequest(JobKind.LORA_GENERATE, params, text=prompt)

    def train_request(self, upload_id: str) -> JobRequest:
        """A training of an uploaded image set."""
        return JobRequest(JobKind.LORA_TRAIN, {"upload_id": upload_id})

    def demo_request(self, model: str, prompt: str) -> JobRequest:
        """A demo image (``model``: tadz or pudgy)."""
        return JobRequest(JobKind.DEMO_GENERATE, {"model": model, "prompt": prompt}, text=prompt)

    def request_like(self, job: Job) -> JobRequest:
        """The same request again (speak again, re-roll, retry)."""
        params = dict(job.params)
        text = params.get("text") or params.get("prompt")
        return JobRequest(job.kind, params, text=str(text) if text else None)

    # ------------------------------------------------------------------ submit

    async def submit(self, interaction: discord.Interaction[Any], request: JobRequest) -> Job:
        """Defer, admit, save the job, count it, queue it, and tell the member where it is.

        The deferral comes first (Discord wants an answer within 3 s, the gate and the store
        may take their time under load) and is ephemeral: the queue note is the member's
        business; the result is a follow-up, public unless the gate asked for privacy.
        """
        if not interaction.response.is_done():
            await interaction.response.defer(ephemeral=True, thinking=True)
        greq = gate_request(interaction, request)
        admission = await self.services.gate.admit(greq)
        # Whose key it will use: the member without one is told to link before anything is saved.
        await self.services.accounts.client_for(greq.user_id, shared_key=admission.shared_key)
        job = await self.store.create(
            user_id=greq.user_id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            kind=request.kind,
            params=request.params,
            private=admission.private_results,
            shared_key=admission.shared_key,
            application_id=interaction.application_id,
            interaction_token=SecretStr(interaction.token),
            interaction_at=interaction.created_at,
        )
        # Pending until the outcome: a failure or a cancel gives the allowance back.
        await self.services.gate.record(greq, job_id=job.id)
        self._interactions[job.id] = interaction
        position = self.enqueue(job)
        note = "".join(f"\n{n}" for n in admission.notes)
        # Accepted, not done: the outcome (success or failure) is its own message later.
        if position is None:
            status = "⏳ Accepted: working on it…"
        else:
            status = f"⏳ Accepted and queued: you are number {position} in line."
        with contextlib.suppress(discord.HTTPException):
            await interaction.edit_original_response(content=status + note)
        return job

    def enqueue(self, job: Job) -> int | None:
        """Queue a saved job; returns its place in line, ``None`` when it started at once."""
        self._members[job.id] = job.user_id
        self.queue.push(job.user_id, job.id)
        self._pump()
        return self.queue.position(job.id)

    def position(self, job_id: str) -> int | None:
        """Where a queued job stands (1 = next), ``None`` when it is not waiting."""
        return self.queue.position(job_id)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Pick up what the last run left: queued, running, finished-but-not-posted jobs."""
        for job in await self.store.unfinished():
            if job.state is JobState.QUEUED:
                self._members[job.id] = job.user_id
                self.queue.push(job.user_id, job.id)
            elif job.state is JobState.RUNNING and job.kind is JobKind.LORA_TRAIN:
                self._spawn(self._watch(job.id), f"watch {job.id}")
            elif job.state is JobState.RUNNING:
                self._spawn(self._recover_generation(job), f"recover {job.id}")
            else:
                self._spawn(self._deliver(job.id), f"deliver {job.id}")
        self._pump()

    async def stop(self) -> None:
        """Cancel the runner's tasks (rows keep the state; the next start resumes)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"tada-job {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _pump(self) -> None:
        while (nxt := self.queue.pop()) is not None:
            member, job_id = nxt
            self._spawn(self._slot(member, job_id), f"run {job_id}")

    async def _slot(self, member: int, job_id: str) -> None:
        try:
            await self._execute(job_id)
        except JobNotFound:
            log.info("job %s was deleted (/tada forget) before it ran", job_id)
            # Nothing was delivered: its usage row (kept without the member's id) gives
            # its allowance back.
            await self.services.gate.settle(job_id, delivered=False)
        finally:
            self.queue.release(member)
            self._pump()

    # ------------------------------------------------------------------ execution

    async def _client_for(self, job: Job) -> TadaClient:
        shared = await self.store.shared_key(job.id) if job.has_shared_key else None
        return await self.services.accounts.client_for(job.user_id, shared_key=shared)

    async def _execute(self, job_id: str) -> None:
        job = await self.store.update(job_id, state=JobState.RUNNING, started_at=utcnow())
        try:
            tada = await self._client_for(job)
            if job.kind is JobKind.LORA_TRAIN:
                await self._start_training(tada, job)
                return
            try:
                result = await self._generate(tada, job)
            except (TadaTimeout, TadaTransportError) as lost:
                # The answer was lost, not necessarily the work: Ta-da may have made it.
                found = await self._look_up_lost(tada, job)
                if found is None:
                    raise
                log.info("job %s: answer lost (%s); found the generation made", job.id, lost)
                result = found
        except Exception as exc:  # an accepted job ends with a reason, whatever failed
            await self._fail(job, exc)
        else:
            await self.store.update(
                job_id,
                state=JobState.FINISHED,
                result=result,
                tada_id=result.get("generation_id"),
                finished_at=utcnow(),
            )
        await self._deliver(job_id)

    async def _look_up_lost(self, tada: TadaClient, job: Job) -> dict[str, Any] | None:
        """The generation Ta-da made for ``job`` when its answer was lost, once listed.

        Ta-da may still be working on it (the client gave up, not the engine): the listing
        is searched for ``lost_lookup_seconds``, every ``poll_seconds``.
        """
        if job.kind not in LISTED_KINDS:
            return None
        deadline = time.monotonic() + self.config.lost_lookup_seconds
        while True:
            try:
                found = await self._find_generation(tada, job)
            except TadaError as exc:
                log.warning("job %s: could not look for its generation: %s", job.id, exc)
                found = None
            if found is not None or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(self.config.poll_seconds)

    async def _fail(self, job: Job, exc: BaseException) -> None:
        """End the job with a member-facing reason. A failure the member's own input or
        account caused is theirs alone: it is answered privately, not in the channel."""
        text = reply_for(exc, where=f"job {job.kind.value} {job.id}").text
        if isinstance(exc, ServiceUnavailable) and job.kind is JobKind.DEMO_GENERATE:
            self.services.readiness.demo_missing(str(job.params.get("model")), exc.message)
        await self.store.update(
            job.id,
            state=JobState.FAILED,
            error=text,
            private=job.private or caused_by_member(exc),
            finished_at=utcnow(),
        )

    async def _generate(self, tada: TadaClient, job: Job) -> dict[str, Any]:
        p = job.params
        if job.kind is JobKind.VOICE_SPEAK:
            if not p.get("voice_name") or "voice_base_score" not in p:
                # The post shows the voice's name and its base voice's score beside the
                # clone's; a command or button gave only the voice's id.
                voice = await tada.get_voice(str(p["voice_id"]))
                named = {"voice_name": p.get("voice_name") or voice.name}
                base = {"voice_base_score": voice.base_similarity_score}
                await self.store.update(job.id, params={**p, **named, **base})
            spoken = await tada.generate_voice(str(p["voice_id"]), str(p["text"]))
            return {
                "generation_id": spoken.id,
                "url": spoken.url,
                "similarity": spoken.similarity,
                "similarity_score": spoken.similarity_score,
                "likeness": spoken.likeness,
                "duration_seconds": spoken.duration_seconds,
                "format": spoken.format,
            }
        if job.kind is JobKind.LORA_GENERATE:
            if not p.get("lora_name"):
                # The result is titled by the LoRA's name; a command or button gave its id.
                try:
                    name = await self._lora_name(tada, str(p["lora_id"]))
                except TadaError as exc:  # a title is not worth failing the image for
                    log.info("job %s: no LoRA name: %s", job.id, exc)
                    name = None
                if name:
                    p = {**p, "lora_name": name}
                    await self.store.update(job.id, params=p)
            image = await tada.generate_lora(str(p["lora_id"]), str(p["prompt"]))
        elif job.kind is JobKind.DEMO_GENERATE:
            demo = tada.demo_pudgy if p.get("model") == "pudgy" else tada.demo_tadz
            image = await demo(str(p["prompt"]))
        else:
            raise ValueError(f"{job.kind} is not a generation")
        readiness = self.services.readiness
        if job.kind is JobKind.DEMO_GENERATE:
            readiness.demo_works(str(p.get("model")))
        if is_test_model(image.model):
            readiness.test_model_seen(f"the engine drew it with {image.model}")
        elif image.model:
            readiness.real_model_seen()
        return {
            "generation_id": image.id,
            "url": image.image_url,
            "prompt": image.prompt or p.get("prompt"),
            "enhanced_prompt": image.enhanced_prompt,
            "model": image.model,
        }

    async def _lora_name(self, tada: TadaClient, lora_id: str) -> str | None:
        """The name of the LoRA ``lora_id`` (its upload's id or its training's id)."""
        uploads = {u.id: u.name for u in await tada.list_lora_uploads()}
        if lora_id in uploads:
            return uploads[lora_id]
        for training in await tada.list_lora_trainings(limit=100):
            if training.id == lora_id:
                return training.name or uploads.get(str(training.upload_id))
        return None

    async def _start_training(self, tada: TadaClient, job: Job) -> None:
        upload_id = str(job.params["upload_id"])
        params = dict(job.params)
        if not params.get("name"):
            for upload in await tada.list_lora_uploads():
                if upload.id == upload_id:
                    params.update(name=upload.name, trigger_word=upload.trigger_word)
        training = await tada.start_lora_training(upload_id)
        await self.store.update(job.id, params=params, tada_id=training.upload_id or upload_id)
        interaction = self._live_interaction(job.id)
        if interaction is not None and not job.private:
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(
                    content="🧪 Training started; its progress is posted in this channel."
                )
        self._spawn(self._watch(job.id), f"watch {job.id}")

    # ------------------------------------------------------------------ trainings

    async def _watch(self, job_id: str) -> None:
        """Poll a training until it ends, editing its progress message as it goes."""
        if job_id in self._watching:
            return
        self._watching.add(job_id)
        try:
            await self._watch_loop(job_id)
        except JobNotFound:
            log.info("job %s was deleted (/tada forget); no longer watched", job_id)
            await self.services.gate.settle(job_id, delivered=False)
        finally:
            self._watching.discard(job_id)

    async def _watch_loop(self, job_id: str) -> None:
        shown: str | None = None
        edited_at = -math.inf
        while True:
            job = await self.store.get(job_id)
            upload_id = str(job.tada_id or job.params["upload_id"])
            try:
                tada = await self._client_for(job)
                training = await tada.get_lora_training(upload_id)
            except (TadaTransportError, TadaTimeout, ServiceUnavailable):
                # Ta-da is down or restarting: the training goes on there; keep watching.
                await asyncio.sleep(self.config.poll_seconds)
                continue
            except NotFound:
                if job.tada_id is None:
                    # The start call never reached Ta-da (restart in between): start it now.
                    await self.store.update(job_id, state=JobState.QUEUED)
                    self.enqueue(job)
                    return
                await self._fail(job, UserFacingError("Ta-da no longer knows this training."))
                await self._end_progress(job_id)
                await self._deliver(job_id)
                return
            except Exception as exc:  # e.g. the member's key was revoked: say so
                await self._fail(job, exc)
                await self._end_progress(job_id)
                await self._deliver(job_id)
                return
            text = training_progress(job, training, utcnow())
            final = training.state in FINAL_TRAINING
            due = time.monotonic() - edited_at >= self.config.progress_edit_seconds
            if text != shown and (due or final):
                await self._show_progress(job, text)
                shown, edited_at = text, time.monotonic()
            if final:
                await self._finish_training(job, training)
                await self._deliver(job_id)
                return
            await asyncio.sleep(self.config.poll_seconds)

    async def _finish_training(self, job: Job, training: LoraTraining) -> None:
        if training.state is TrainingStatus.SUCCEEDED:
            await self.store.update(
                job.id,
                state=JobState.FINISHED,
                result={"lora_id": training.id or job.tada_id, "status": training.status},
                finished_at=utcnow(),
            )
        else:
            reason = training.error or f"the training ended as {training.status}"
            await self.store.update(
                job.id, state=JobState.FAILED, error=reason, finished_at=utcnow()
            )

    async def _end_progress(self, job_id: str) -> None:
        """A training no longer followed: its progress message says so (never left on
        "training")."""
        job = await self.store.get(job_id)
        if job.progress_message_id is None and not job.private:
            return  # no progress was shown
        await self._show_progress(job, stopped_progress(job))

    async def _show_progress(self, job: Job, text: str) -> None:
        """Edit the training's progress message (post it first); best effort."""
        try:
            # A private job's progress is its interaction's note; a failure made private
            # later still ends the message already posted in the channel.
            if job.private and job.progress_message_id is None:
                interaction = self._live_interaction(job.id)
                if interaction is not None:
                    await interaction.edit_original_response(content=text)
                return
            channel = self._channel(job)
            if channel is None:
                return
            if job.progress_message_id is not None:
                try:
                    await channel.get_partial_message(job.progress_message_id).edit(content=text)
                    return
                except discord.NotFound:
                    pass  # deleted by someone: post a new one below
            message = await channel.send(text, allowed_mentions=discord.AllowedMentions.none())
            await self.store.update(job.id, progress_message_id=message.id)
        except discord.HTTPException as exc:
            # Progress is a courtesy; the result itself goes through _deliver's retries.
            log.warning("could not update progress of job %s: %s", job.id, exc)

    # ------------------------------------------------------------------ recovery

    async def _recover_generation(self, job: Job) -> None:
        """A generation was in flight at a restart: post it if Ta-da finished it."""
        found: dict[str, Any] | None = None
        try:
            tada = await self._client_for(job)
            found = await self._find_generation(tada, job)
        except TadaError as exc:
            log.warning("could not look for job %s's generation: %s", job.id, exc)
        except UserFacingError:
            pass
        if found is not None:
            await self.store.update(
                job.id,
                state=JobState.FINISHED,
                result=found,
                tada_id=found.get("generation_id"),
                finished_at=utcnow(),
            )
        else:
            await self.store.update(job.id, state=JobState.INTERRUPTED, finished_at=utcnow())
        await self._deliver(job.id)

    async def _find_generation(self, tada: TadaClient, job: Job) -> dict[str, Any] | None:
        """The generation Ta-da made for ``job``: same text, made after the job started
        (less clock skew), and not already another job's result (a member may ask for the
        same thing twice in a row); newest first, as Ta-da lists them."""
        since = _aware((job.started_at or job.created_at) - CLOCK_SKEW)
        p = job.params
        found: list[dict[str, Any]] = []
        if job.kind is JobKind.VOICE_SPEAK:
            page = await tada.list_voice_generations(str(p["voice_id"]), limit=50)
            found = [
                {
                    "generation_id": gen.id,
                    "url": gen.audio_url,
                    "similarity": gen.similarity,
                    "similarity_score": gen.similarity_score,
                    "likeness": gen.likeness,
                    "duration_seconds": gen.duration_seconds,
                    "format": gen.format,
                }
                for gen in page.generations
                if gen.text == p["text"] and _aware(gen.created_at) >= since
            ]
        elif job.kind is JobKind.LORA_GENERATE:
            found = [
                {
                    "generation_id": image.id,
                    "url": image.image_url,
                    "prompt": image.prompt,
                    "enhanced_prompt": image.enhanced_prompt,
                }
                for image in await tada.list_lora_generations(str(p["lora_id"]), limit=50)
                if image.prompt == p["prompt"]
                and image.created_at is not None
                and _aware(image.created_at) >= since
            ]
        # Demos have no listing to find them in: they are retried by the member.
        taken = await self.store.claimed({str(f["generation_id"]) for f in found}, besides=job.id)
        return next((f for f in found if f["generation_id"] not in taken), None)

    # ------------------------------------------------------------------ delivery

    def _live_interaction(self, job_id: str) -> discord.Interaction[Any] | None:
        interaction = self._interactions.get(job_id)
        if interaction is None:
            return None
        # Discord's clock (the interaction's snowflake time), not ours.
        if discord.utils.utcnow() - interaction.created_at > TOKEN_LIFETIME:
            self._interactions.pop(job_id, None)
            return None
        return interaction

    async def _webhook(self, job: Job) -> discord.Webhook | None:
        """The interaction's follow-up webhook while its token is valid (after a restart too)."""
        interaction = self._live_interaction(job.id)
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

    async def _deliver(self, job_id: str, round_: int = 0) -> None:
        """Post a final job's result once, trying each destination with retries."""
        if job_id in self._delivering:
            return
        self._delivering.add(job_id)
        try:
            try:
                job = await self.store.get(job_id)
            except JobNotFound:
                return  # the member asked the bot to forget them: nothing to post
            if job.state in FINAL_STATES:
                # Only what the member got counts against their quota.
                await self.services.gate.settle(job.id, delivered=job.state is JobState.FINISHED)
            if job.posted:
                return
            files, note = await self._artifacts(job)
            if files:
                await self._play_in_voice(job, files[0][1])
            if files and await self._as_voice_message(job, files[0][1]):
                # The voice message holds the audio; the card below says where it is.
                files, note = (), VOICE_MESSAGE_NOTE
            outgoing = render(job, files, note)
            destinations = (
                (Destination.INTERACTION, Destination.DM)
                if job.private
                else (Destination.INTERACTION, Destination.CHANNEL, Destination.DM)
            )
            for destination in destinations:
                message_id = await self._post_with_retries(job, destination, outgoing)
                if message_id is not None:
                    await self.store.mark_posted(job.id, message_id=message_id, via=destination)
                    await self._tidy_status(job)
                    return
            log.error("job %s: no destination took the result; trying again later", job.id)
            if round_ < len(REDELIVERY_DELAYS):
                self._spawn(self._redeliver(job_id, round_ + 1), f"redeliver {job_id}")
        finally:
            self._delivering.discard(job_id)

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
        await self.store.update(job.id, result={**result, "played": True})
        clip = Clip(audio, int(channel_id), job.user_id, label=f"job {job.id}")
        try:
            self.player.enqueue(job.guild_id, clip)
        except QueueFull:
            log.warning("job %s: the voice queue of guild %s is full", job.id, job.guild_id)

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
            or self.services.policy is None
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
        await self._deliver(job_id, round_)

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
