"""Recovery: what a generation cut off by a restart (or whose answer was lost) became.

Ta-da lists generations, so a job whose answer never arrived is found in the listing;
one that cannot be found is posted as interrupted, with a Retry button.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from bot.errors import UserFacingError
from bot.jobs.deliver import Delivery
from bot.jobs.images import image_result, refinement_of
from bot.jobs.models import Job, JobKind, JobState, speech_result
from bot.jobs.models import aware as _aware
from bot.jobs.store import JobStore
from bot.store.models import utcnow
from bot.tada import TadaClient
from bot.tada.errors import TadaError

log = logging.getLogger(__name__)

# A generation listed by Ta-da within this much before the job started is still ours
# (the bot's and the engine's clocks may differ slightly).
CLOCK_SKEW = timedelta(seconds=10)


async def find_generation(tada: TadaClient, job: Job, store: JobStore) -> dict[str, Any] | None:
    """The generation Ta-da made for ``job``: same text, made after the job started
    (less clock skew), and not already another job's result (a member may ask for the
    same thing twice in a row); newest first, as Ta-da lists them."""
    since = _aware((job.started_at or job.created_at) - CLOCK_SKEW)
    p = job.params
    found: list[dict[str, Any]] = []
    if job.kind is JobKind.VOICE_SPEAK:
        page = await tada.list_voice_generations(str(p["voice_id"]), limit=50)
        found = [
            speech_result(gen)
            for gen in page.generations
            if gen.text == p["text"] and _aware(gen.created_at) >= since
        ]
    elif job.kind is JobKind.LORA_GENERATE:
        offer = await tada.generation_offer()
        found = [
            image_result(image, p, offer)
            for image in await tada.list_lora_generations(str(p["lora_id"]), limit=50)
            if image.prompt == p["prompt"]
            # A variation and a fresh image of the same prompt are not the same request.
            and (not offer.variation_of or image.variation_of == p.get("variation_of"))
            # Nor are an upscale or a variation of an image (their parent and operation).
            and (image.parent_id, image.operation) == (refinement_of(p) or (None, None))
            and image.created_at is not None
            and _aware(image.created_at) >= since
        ]
    # Demos have no listing to find them in: they are retried by the member.
    taken = await store.claimed({str(f["generation_id"]) for f in found}, besides=job.id)
    return next((f for f in found if f["generation_id"] not in taken), None)


async def recover_generation(
    job: Job,
    *,
    store: JobStore,
    client_for: Callable[[Job], Awaitable[TadaClient]],
    delivery: Delivery,
) -> None:
    """A generation was in flight at a restart: post it if Ta-da finished it."""
    found: dict[str, Any] | None = None
    try:
        tada = await client_for(job)
        found = await find_generation(tada, job, store)
    except TadaError as exc:
        log.warning("could not look for job %s's generation: %s", job.id, exc)
    except UserFacingError:
        pass
    if found is not None:
        await store.update(
            job.id,
            state=JobState.FINISHED,
            result=found,
            tada_id=found.get("generation_id"),
            finished_at=utcnow(),
        )
    else:
        await store.update(job.id, state=JobState.INTERRUPTED, finished_at=utcnow())
    await delivery.deliver(job.id)
