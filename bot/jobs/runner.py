"""The job runner: members' requests run off the interaction path, fairly, and their results
reach the channel they came from, across bot restarts.

Life of a request (:meth:`JobRunner.submit`): the gate admits it, the interaction is
deferred, a job row is saved (before any Ta-da call), the member is told their place in
the queue. A slot frees up (:class:`~bot.jobs.fairness.FairQueue`: bounded, round-robin
across members), the Ta-da call runs, its answer is saved on the row, and the result is
posted. :meth:`JobRunner.start` (at bot start-up) resumes all of it: queued jobs are
queued again, trainings watched again, generations the engine finished are posted,
generations cut off are posted as interrupted with a Retry button.

Several bot processes may share one store. The queue is the store's (``QUEUED`` rows),
served in the same fair order by every process; a process works on a job only while it
holds the job's claim (:meth:`JobStore.claim`: one conditional update, with a lease it
renews every ``sweep_seconds``), and claims only jobs of guilds on its own shards
(:class:`~bot.jobs.store.ShardScope`; DMs with shard 0). The sweep also takes over what a
dead process of the same shards held once its lease ran out (a restarted process, under
the same runner id, at once), and picks up jobs queued while its own slots were full.

This module submits and queues; each other role has its module, wired here:

- :mod:`bot.jobs.execute`: the Ta-da call and what its answer or failure becomes;
- :mod:`bot.jobs.trainings`: start a training, watch it, edit its progress message;
- :mod:`bot.jobs.deliver`: post a result once (interaction, channel, DM, with retries);
- :mod:`bot.jobs.recover`: find what a cut-off or lost generation became.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import discord
from discord.ext import tasks
from pydantic import SecretStr

from bot.config import DiscordConfig
from bot.errors import DemoNotSetUp
from bot.gate import Action, Admission, Feature, GateRequest, request_for
from bot.jobs.deliver import Delivery
from bot.jobs.deps import JobServices
from bot.jobs.execute import Execution, fail_job
from bot.jobs.fairness import fair_order
from bot.jobs.images import ImageOptions
from bot.jobs.models import Job, JobKind, JobRequest, JobState
from bot.jobs.recover import recover_generation
from bot.jobs.store import JobNotFound, JobStore, ShardScope
from bot.jobs.trainings import Trainings
from bot.tada import TadaClient
from bot.voice_channel import VoiceChannelPlayer

log = logging.getLogger(__name__)

FEATURE_OF = {
    JobKind.VOICE_SPEAK: (Feature.VOICE, Action.VOICE_SPEAK),
    JobKind.LORA_TRAIN: (Feature.LORA, Action.LORA_TRAIN),
    JobKind.LORA_GENERATE: (Feature.LORA, Action.LORA_GENERATE),
    JobKind.DEMO_GENERATE: (Feature.DEMO, Action.DEMO_GENERATE),
}


@dataclass
class Slots:
    """This process's slots: at most ``max_running`` of its jobs run at once; a member
    holds at most ``per_member`` slots across every process (counted in the store)."""

    max_running: int
    per_member: int
    running: int = 0


def default_runner_id(discord_config: DiscordConfig) -> str:
    """The name of this process's claims: its host and its shards, stable across restarts
    (a restarted process takes its own claims back without waiting for their leases)."""
    shards = discord_config.shard_ids
    which = ",".join(map(str, shards)) if shards is not None else "all"
    return f"{socket.gethostname()[:40]}/shards-{which}"[:64]


def shard_scope(discord_config: DiscordConfig) -> ShardScope | None:
    """The jobs this process may claim: those of its shards (``None``: it runs every
    shard, so any job)."""
    ids = discord_config.shard_ids
    if ids is None or set(ids) == set(range(discord_config.shard_count)):
        return None
    return ShardScope(discord_config.shard_count, frozenset(ids))


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


def locale_of(interaction: discord.Interaction[Any]) -> str | None:
    """The member's Discord locale ("en-US", "de", "pt-BR"), ``None`` when not given."""
    locale = getattr(interaction, "locale", None)
    value = getattr(locale, "value", locale)
    return value if isinstance(value, str) and value else None


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
        self.store = JobStore(
            services.store, services.members.keys, shards=shard_scope(services.config.discord)
        )
        self.queue = Slots(
            max_running=self.config.max_concurrent, per_member=self.config.per_member
        )
        # Whose claims this process makes, and for how long each lasts unrenewed.
        self.owner = self.config.runner_id or default_runner_id(services.config.discord)
        self.lease = timedelta(seconds=self.config.lease_seconds)
        # Jobs this process holds the claim of and works on (renewed by the sweep).
        self._claimed: set[str] = set()
        self._filling = asyncio.Lock()
        self._swept_at = -math.inf
        # A discord.ext.tasks loop: SimCord parks it between ticks (tests advance time).
        self._sweeper = tasks.loop(seconds=self.config.sweep_seconds)(self._sweep_tick)
        # Live interactions of jobs asked in this process (their follow-up webhook).
        self._interactions: dict[str, discord.Interaction[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # The roles, each in its module: posting, trainings, running the Ta-da call.
        self.delivery = Delivery(
            client=client,
            services=services,
            store=self.store,
            config=self.config,
            player=player,
            interactions=self._interactions,
            spawn=self._spawn,
            owner=self.owner,
            done=self._done_with,
        )
        fail = functools.partial(fail_job, store=self.store, readiness=services.readiness)
        self.trainings = Trainings(
            store=self.store,
            config=self.config,
            gate=services.gate,
            delivery=self.delivery,
            client_for=self._client_for,
            fail=fail,
            requeue=self._requeue,
            spawn=self._spawn,
            owns=self.owns,
        )
        self.execution = Execution(
            store=self.store,
            config=self.config,
            readiness=services.readiness,
            delivery=self.delivery,
            client_for=self._client_for,
            start_training=self.trainings.start,
        )

    def __repr__(self) -> str:
        return f"<JobRunner {self.owner} running={self.queue.running} held={len(self._claimed)}>"

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
        self,
        lora_id: str,
        prompt: str,
        lora_name: str | None = None,
        *,
        options: ImageOptions | None = None,
    ) -> JobRequest:
        """An image from a LoRA (``options``: seed, aspect ratio, negative prompt)."""
        params = {"lora_id": lora_id, "prompt": prompt, "lora_name": lora_name}
        if options is not None:
            params |= options.params()
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
        model = str(request.params.get("model"))
        if request.kind is JobKind.DEMO_GENERATE and self.services.readiness.demo_not_set_up(model):
            # Known from the engine's settings: one private answer, no job, nothing to retry.
            raise DemoNotSetUp(model)
        if not interaction.response.is_done():
            await interaction.response.defer(ephemeral=True, thinking=True)
        locale = locale_of(interaction)
        if request.kind is JobKind.VOICE_SPEAK and locale and "locale" not in request.params:
            # The member's Discord locale: the engine's hint to the text's language.
            request = replace(request, params={**request.params, "locale": locale})
        greq = gate_request(interaction, request)
        admission = await self.services.gate.admit(greq)
        # Whose key it will use: the member without one is told to link before anything is saved.
        await self.services.accounts.client_for(greq.user_id, shared_key=admission.shared_key)
        job = await self.store.create(
            user_id=greq.user_id,
            # Where the server's rules apply (its shard, its policy); a user install's
            # speech in a server without the bot posts like one asked in DMs.
            guild_id=greq.guild_id,
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
        await self._fill()
        position = await self.position(job.id)
        note = "".join(f"\n{n}" for n in admission.notes)
        # Accepted, not done: the outcome (success or failure) is its own message later.
        if position is None:
            status = "⏳ Accepted: working on it…"
        else:
            status = f"⏳ Accepted and queued: you are number {position} in line."
        with contextlib.suppress(discord.HTTPException):
            await interaction.edit_original_response(content=status + note)
        return job

    def enqueue(self, job: Job) -> None:
        """A saved job is queued: fill free slots (this process's or, at its next sweep,
        another's)."""
        self._pump()

    async def position(self, job_id: str) -> int | None:
        """Where a queued job stands in the shared queue (1 = next), ``None`` when it is
        not waiting."""
        snapshot = await self.store.queue_snapshot()
        order = fair_order(snapshot.waiting, snapshot.running, snapshot.served)
        return next((n for n, (_, j) in enumerate(order, start=1) if j == job_id), None)

    def owns(self, job_id: str) -> bool:
        """Whether this process holds the job's claim (as of its last renewal)."""
        return job_id in self._claimed

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Pick up what the last run left (queued, running, finished-but-not-posted jobs,
        this process's and any dead process's), then sweep every ``sweep_seconds``."""
        await self.store.release_queued(self.owner)
        await self.sweep()
        if not self._sweeper.is_running():
            self._sweeper.start()

    async def stop(self) -> None:
        """Cancel the runner's tasks and give up its claims (rows keep the state; this or
        any other process resumes them)."""
        self._sweeper.cancel()
        tasks_ = list(self._tasks)
        for task in tasks_:
            task.cancel()
        await asyncio.gather(*tasks_, return_exceptions=True)
        # A process stopped on purpose hands its jobs over at once (a rolling restart);
        # one that dies keeps them until their leases run out. A post cut off here is
        # "in doubt" on its row, and handled as such by whoever delivers it next.
        with contextlib.suppress(Exception):
            await self.store.release_all(self.owner, set(self._claimed))
        self._claimed.clear()

    async def drain(self) -> None:
        """Wait until every task this runner started has ended (tests; a sweep's work)."""
        while pending := [t for t in self._tasks if not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _sweep_tick(self) -> None:
        if self._sweeper.current_loop == 0:
            return  # the loop's immediate first turn: start() has just swept
        # Leases are real time: a simulated clock jumping hours ahead (SimCord) must not
        # run a sweep per simulated interval.
        if time.monotonic() - self._swept_at < self.config.sweep_seconds / 2:
            return
        try:
            await self.sweep()
        except Exception:  # the loop must outlive a database hiccup
            log.exception("job sweep failed; retrying at the next one")

    async def sweep(self) -> None:
        """Renew this process's claims, take over jobs nobody (alive) holds, fill slots."""
        self._swept_at = time.monotonic()
        kept = await self.store.renew(self.owner, set(self._claimed), lease=self.lease)
        for lost in self._claimed - kept:
            log.warning("job %s: claim lost (lease ran out); another process has it", lost)
        self._claimed &= kept
        if self.services.policy is not None:
            await self.services.policy.gate.release_orphans()
        for job in await self.store.takeable(self.owner):
            if job.id in self._claimed or job.state is JobState.QUEUED:
                continue  # being worked on here / served by _fill in fair order
            if not await self.store.claim(job.id, self.owner, lease=self.lease):
                continue
            self._claimed.add(job.id)
            if job.state is JobState.RUNNING and job.kind is JobKind.LORA_TRAIN:
                self._spawn(self.trainings.watch(job.id), f"watch {job.id}")
            elif job.state is JobState.RUNNING:
                self._spawn(
                    recover_generation(
                        job,
                        store=self.store,
                        client_for=self._client_for,
                        delivery=self.delivery,
                    ),
                    f"recover {job.id}",
                )
            else:
                self._spawn(self.delivery.deliver(job.id), f"deliver {job.id}")
        await self._fill()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"tada-job {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _pump(self) -> None:
        self._spawn(self._fill(), "fill")

    async def _fill(self) -> None:
        """Claim queued jobs in the shared fair order while this process has free slots."""
        async with self._filling:
            while self.queue.running < self.queue.max_running:
                snapshot = await self.store.queue_snapshot()
                running = dict(snapshot.running)
                picked: tuple[int, str] | None = None
                for member, job_id in fair_order(snapshot.waiting, running, snapshot.served):
                    if running.get(member, 0) >= self.queue.per_member:
                        continue
                    if await self.store.claim(
                        job_id, self.owner, lease=self.lease, queued_only=True
                    ):
                        picked = (member, job_id)
                        break
                if picked is None:
                    return
                self._claimed.add(picked[1])
                self.queue.running += 1
                self._spawn(self._slot(*picked), f"run {picked[1]}")

    async def _slot(self, member: int, job_id: str) -> None:
        try:
            await self.execution.execute(job_id)
        except JobNotFound:
            log.info("job %s was deleted (/tada forget) before it ran", job_id)
            # Nothing was delivered: its usage row (kept without the member's id) gives
            # its allowance back.
            await self.services.gate.settle(job_id, delivered=False)
            self._claimed.discard(job_id)
        finally:
            self.queue.running -= 1
            self._pump()

    def _done_with(self, job_id: str) -> None:
        """The job is posted (its claim ended with the record) or no longer held here:
        nothing more to renew."""
        self._claimed.discard(job_id)

    async def _requeue(self, job: Job) -> None:
        """A training whose start never reached Ta-da: back in the shared queue."""
        await self.store.update(job.id, state=JobState.QUEUED)
        await self.store.release(job.id, self.owner)
        self._claimed.discard(job.id)
        self._pump()

    async def cancel_queued(self, job_id: str) -> bool:
        """Take a queued job nobody runs out of the queue (claimed here, to be ended by
        the caller); ``False`` when it already started somewhere."""
        return await self.store.cancel_queued(job_id, self.owner, lease=self.lease)

    # ------------------------------------------------------------------ execution

    async def _client_for(self, job: Job) -> TadaClient:
        shared = await self.store.shared_key(job.id) if job.has_shared_key else None
        return await self.services.accounts.client_for(job.user_id, shared_key=shared)
