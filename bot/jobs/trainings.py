"""Trainings outlive interactions: after the start call the training is polled and one
progress message edited, then the result is posted with a mention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import discord

from bot.config import JobsConfig
from bot.errors import UserFacingError
from bot.gate import Gate
from bot.jobs.deliver import Delivery, Spawn
from bot.jobs.models import Job, JobState
from bot.jobs.render import ProgressImage, training_progress
from bot.jobs.store import JobNotFound, JobStore
from bot.media import IMAGE_SUFFIXES
from bot.messages import DEFAULT_FILE_LIMIT
from bot.store.models import utcnow
from bot.tada import TadaClient
from bot.tada.errors import (
    NotFound,
    ServiceUnavailable,
    TadaError,
    TadaTimeout,
    TadaTransportError,
)
from bot.tada.models import LoraTraining, TrainingStatus

log = logging.getLogger(__name__)

FINAL_TRAINING = frozenset(
    {TrainingStatus.SUCCEEDED, TrainingStatus.FAILED, TrainingStatus.CANCELED}
)
# A validation image larger than this is not attached: Discord's smallest upload limit.
VALIDATION_IMAGE_LIMIT = DEFAULT_FILE_LIMIT


def _validation_key(training: LoraTraining) -> str | None:
    """What tells one validation image from the next: its step (the signed URL changes
    with each poll), else the URL; ``None`` while there is none."""
    if not training.validation_image_url:
        return None
    if training.validation_step is not None:
        return f"step {training.validation_step}"
    return training.validation_image_url


class Trainings:
    """Starts and watches LoRA trainings for one runner."""

    def __init__(
        self,
        *,
        store: JobStore,
        config: JobsConfig,
        gate: Gate,
        delivery: Delivery,
        client_for: Callable[[Job], Awaitable[TadaClient]],
        fail: Callable[[Job, BaseException], Awaitable[None]],
        requeue: Callable[[Job], Awaitable[None]],
        spawn: Spawn,
        owns: Callable[[str], bool],
    ) -> None:
        self.store = store
        self.config = config
        self.delivery = delivery
        self._gate = gate
        self._client_for = client_for
        self._fail = fail
        # A training whose start never reached Ta-da goes back into the queue.
        self._requeue = requeue
        self._spawn = spawn
        # Whether this process still holds a job's claim: a watch stops when it does not.
        self._owns = owns
        self._watching: set[str] = set()

    async def start(self, tada: TadaClient, job: Job) -> None:
        upload_id = str(job.params["upload_id"])
        params = dict(job.params)
        if not params.get("name"):
            for upload in await tada.list_lora_uploads():
                if upload.id == upload_id:
                    params.update(name=upload.name, trigger_word=upload.trigger_word)
        training = await tada.start_lora_training(upload_id)
        await self.store.update(job.id, params=params, tada_id=training.upload_id or upload_id)
        interaction = self.delivery.live_interaction(job.id)
        if interaction is not None and not job.private:
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(
                    content="🧪 Training started; its progress is posted in this channel."
                )
        self._spawn(self.watch(job.id), f"watch {job.id}")

    async def watch(self, job_id: str) -> None:
        """Poll a training until it ends, editing its progress message as it goes."""
        if job_id in self._watching:
            return
        self._watching.add(job_id)
        try:
            await self._watch_loop(job_id)
        except JobNotFound:
            log.info("job %s was deleted (/tada forget); no longer watched", job_id)
            await self._gate.settle(job_id, delivered=False)
        finally:
            self._watching.discard(job_id)

    async def _watch_loop(self, job_id: str) -> None:
        shown: str | None = None
        shown_image: str | None = None
        edited_at = -math.inf
        while True:
            if not self._owns(job_id):
                log.info("job %s: another process watches it now", job_id)
                return
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
                    await self._requeue(job)
                    return
                await self._fail(job, UserFacingError("Ta-da no longer knows this training."))
                await self.delivery.end_progress(job_id)
                await self.delivery.deliver(job_id)
                return
            except Exception as exc:  # e.g. the member's key was revoked: say so
                await self._fail(job, exc)
                await self.delivery.end_progress(job_id)
                await self.delivery.deliver(job_id)
                return
            text = training_progress(job, training, utcnow())
            final = training.state in FINAL_TRAINING
            due = time.monotonic() - edited_at >= self.config.progress_edit_seconds
            image_key = _validation_key(training)
            new_image = image_key is not None and image_key != shown_image
            if (text != shown or new_image) and (due or final):
                # Fetched once per step: a failed fetch waits for the next checkpoint.
                image = await self._validation_image(tada, job, training) if new_image else None
                await self.delivery.show_progress(job, text, image)
                shown, edited_at = text, time.monotonic()
                shown_image = image_key if new_image else shown_image
            if final:
                await self._finish_training(job, training)
                await self.delivery.deliver(job_id)
                return
            await asyncio.sleep(self.config.poll_seconds)

    async def _validation_image(
        self, tada: TadaClient, job: Job, training: LoraTraining
    ) -> ProgressImage | None:
        """The latest validation image, downloaded (the engine may listen on loopback only,
        out of Discord's reach), or ``None`` when it cannot be fetched or is too large."""
        url = str(training.validation_image_url)
        suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
        name = f"validation{suffix if suffix in IMAGE_SUFFIXES else '.png'}"
        try:
            chunks = [c async for c in tada.iter_download(url, max_bytes=VALIDATION_IMAGE_LIMIT)]
        except TadaError as exc:
            log.warning("job %s: validation image not shown: %s", job.id, exc)
            return None
        data = b"".join(chunks)
        # Classified like every generated image: one that may not be shown here is left
        # out of the progress message (the text still shows the training's progress).
        withheld = await self.delivery.withheld_note(
            job, data, what=f"job {job.id} validation image"
        )
        if withheld is not None:
            log.info("job %s: validation image withheld", job.id)
            return None
        return ProgressImage(filename=name, data=data, step=training.validation_step)

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
