"""Execution: a job's Ta-da call, with the member's key or the guild's shared one, and what
its answer (or its failure) becomes on the row."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bot.config import JobsConfig
from bot.errors import DemoNotSetUp, caused_by_member, reply_for
from bot.jobs.deliver import Delivery
from bot.jobs.images import (
    generation_body,
    image_operations,
    image_result,
    refine_call,
    refinement_of,
)
from bot.jobs.models import Job, JobKind, JobState, speech_result
from bot.jobs.recover import find_generation
from bot.jobs.store import JobStore
from bot.jobs.streamed import can_stream, speak_streamed
from bot.readiness import EngineReadiness, is_test_model
from bot.store.models import utcnow
from bot.tada import TadaClient
from bot.tada.errors import ServiceUnavailable, TadaError, TadaTimeout, TadaTransportError
from bot.tada.models import ImageGeneration
from bot.tada.offer import GenerationOffer

log = logging.getLogger(__name__)

# Generations Ta-da lists (so a lost answer can be found); demos are not listed.
LISTED_KINDS = frozenset({JobKind.VOICE_SPEAK, JobKind.LORA_GENERATE})


async def fail_job(
    job: Job, exc: BaseException, *, store: JobStore, readiness: EngineReadiness
) -> None:
    """End the job with a member-facing reason. A failure the member's own input or
    account caused is theirs alone: it is answered privately, not in the channel."""
    text = reply_for(exc, where=f"job {job.kind.value} {job.id}").text
    result = None
    if isinstance(exc, ServiceUnavailable) and job.kind is JobKind.DEMO_GENERATE:
        # The engine's only 503: the demo is not configured (its detail, for the operator,
        # went to the log). Said as such, without a Retry that cannot succeed.
        model = str(job.params.get("model"))
        readiness.demo_missing(model, exc.message)
        text = DemoNotSetUp(model).message
        result = {"retry": False}
    await store.update(
        job.id,
        state=JobState.FAILED,
        error=text,
        result=result,
        private=job.private or caused_by_member(exc),
        finished_at=utcnow(),
    )


class Execution:
    """Runs jobs for one runner: generations here, trainings started by ``start_training``."""

    def __init__(
        self,
        *,
        store: JobStore,
        config: JobsConfig,
        readiness: EngineReadiness,
        delivery: Delivery,
        client_for: Callable[[Job], Awaitable[TadaClient]],
        start_training: Callable[[TadaClient, Job], Awaitable[None]],
    ) -> None:
        self.store = store
        self.config = config
        self.readiness = readiness
        self.delivery = delivery
        self._client_for = client_for
        self._start_training = start_training

    async def execute(self, job_id: str) -> None:
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
            await self.fail(job, exc)
        else:
            await self.store.update(
                job_id,
                state=JobState.FINISHED,
                result=result,
                tada_id=result.get("generation_id"),
                finished_at=utcnow(),
            )
        await self.delivery.deliver(job_id)

    async def fail(self, job: Job, exc: BaseException) -> None:
        """End the job with a member-facing reason (:func:`fail_job`)."""
        await fail_job(job, exc, store=self.store, readiness=self.readiness)

    async def _generate(self, tada: TadaClient, job: Job) -> dict[str, Any]:
        p = job.params
        offer: GenerationOffer | None = None
        if job.kind is JobKind.VOICE_SPEAK:
            if not p.get("voice_name") or "voice_base_score" not in p:
                # The post shows the voice's name and its base voice's score beside the
                # clone's; a command or button gave only the voice's id.
                voice = await tada.get_voice(str(p["voice_id"]))
                named = {"voice_name": p.get("voice_name") or voice.name}
                base = {"voice_base_score": voice.base_similarity_score}
                await self.store.update(job.id, params={**p, **named, **base})
            locale = str(p["locale"]) if p.get("locale") else None
            player = self.delivery.player
            if (
                player is not None
                and can_stream(job, self.delivery.client, player)
                and (await tada.generation_offer()).speech_stream
            ):
                # Heard while it is made (``/voice say``); the file is posted once whole.
                return await speak_streamed(tada, job, player, locale=locale)
            spoken = await tada.generate_voice(str(p["voice_id"]), str(p["text"]), locale=locale)
            return speech_result(spoken)
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
            # Seed, size, negative prompt, variation: only what this API offers is sent.
            offer = await tada.generation_offer()
            if refinement_of(p) is not None:
                image = await self._refine(tada, p, offer)
            else:
                body = generation_body(p, offer)
                image = await tada.generate_lora(str(p["lora_id"]), str(p["prompt"]), **body)
        elif job.kind is JobKind.DEMO_GENERATE:
            # A demo takes the prompt alone; its post may offer upscale and vary.
            offer = image_operations(await tada.generation_offer())
            if refinement_of(p) is not None:
                image = await self._refine(tada, p, offer)
            else:
                demo = tada.demo_pudgy if p.get("model") == "pudgy" else tada.demo_tadz
                image = await demo(str(p["prompt"]))
        else:
            raise ValueError(f"{job.kind} is not a generation")
        readiness = self.readiness
        if job.kind is JobKind.DEMO_GENERATE:
            readiness.demo_works(str(p.get("model")))
        if is_test_model(image.model):
            readiness.test_model_seen(f"the engine drew it with {image.model}")
        elif image.model:
            readiness.real_model_seen()
        return image_result(image, p, offer)

    @staticmethod
    async def _refine(
        tada: TadaClient, params: dict[str, Any], offer: GenerationOffer
    ) -> ImageGeneration:
        """Upscale or vary a posted image (engine extensions, this API's own paths)."""
        image_id, strength = refine_call(params, offer)
        if strength is None:
            return await tada.upscale_image(image_id)
        return await tada.vary_image(image_id, strength)

    async def _lora_name(self, tada: TadaClient, lora_id: str) -> str | None:
        """The name of the LoRA ``lora_id`` (its upload's id or its training's id)."""
        uploads = {u.id: u.name for u in await tada.list_lora_uploads()}
        if lora_id in uploads:
            return uploads[lora_id]
        for training in await tada.list_lora_trainings(limit=100):
            if training.id == lora_id:
                return training.name or uploads.get(str(training.upload_id))
        return None

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
                found = await find_generation(tada, job, self.store)
            except TadaError as exc:
                log.warning("job %s: could not look for its generation: %s", job.id, exc)
                found = None
            if found is not None or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(self.config.poll_seconds)
