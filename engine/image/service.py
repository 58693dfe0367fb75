"""The API side of images: trainings and generations as the routers need them.

Async code only: zip checks run in a thread, models run in the job worker. Errors are
:mod:`engine.errors` with a ``detail`` a member can act on (``engine/api/errors.py`` maps
them to HTTP); another user's ids read as absent. The composition root is reached only
through :class:`ImageServices`, the part of it this module uses.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio.to_thread
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from engine.errors import (
    Conflict,
    InvalidField,
    JobOutcomeError,
    NotFound,
    Rejected,
    TooLargeUpload,
)
from engine.image.enhancer import explicit_term
from engine.image.handlers import GENERATE_KIND, TRAIN_KIND
from engine.image.models import LoraGenerationRow, LoraTrainingRow
from engine.image.schemas import (
    MAX_SEED,
    GenerateLoraRequest,
    ImageOperation,
    LoraGeneration,
    LoraTraining,
    LoraTrainingList,
    TrainingStatus,
)
from engine.image.settings import ImageSettings, ZipLimits, image_settings
from engine.image.zipcheck import InspectingCheck, KeptReport, inspect
from engine.jobs import JobService, submit_and_wait
from engine.models import (
    Job,
    JobStatus,
    Upload,
    UploadKind,
    UploadStatus,
    as_utc,
    as_utc_or_none,
    new_id,
)
from engine.storage import NotStored, TooLarge
from engine.uploads import (
    get_owned_upload,
    mark_upload,
    receive_direct_upload,
    size_cap,
    too_large_detail,
)

if TYPE_CHECKING:
    from engine.settings import EngineSettings
    from engine.storage import Storage

_RETRYABLE = (TrainingStatus.FAILED, TrainingStatus.CANCELED)


class ImageServices(Protocol):
    """What this module uses of the composition root (``engine.services.EngineServices``)."""

    @property
    def settings(self) -> EngineSettings: ...

    @property
    def storage(self) -> Storage: ...

    @property
    def jobs(self) -> JobService: ...

    def artifact_url(self, base_url: str, key: str) -> str:
        """A signed, expiring GET URL for a stored artifact."""
        ...


def settings_of(services: ImageServices) -> ImageSettings:
    """The validated ``[engine.image]`` section."""
    return image_settings(services.settings.image)


def training_view(
    row: LoraTrainingRow,
    upload: Upload,
    job: Job | None,
    *,
    sign: Callable[[str], str] | None = None,
) -> LoraTraining:
    """A training row, its upload and its job as the API shows it; ``sign`` makes the signed
    URL of the latest validation image (without it none is shown)."""
    updated = as_utc(row.updated_at)
    if job is not None and as_utc(job.updated_at) > updated:
        updated = as_utc(job.updated_at)
    status = TrainingStatus.of_job(job.status if job else None)
    return LoraTraining(
        id=row.id,
        upload_id=row.upload_id,
        status=status,
        created_at=as_utc(row.created_at),
        updated_at=updated,
        progress=job.progress if job else 0,
        error=job.error if job else None,
        started_at=as_utc_or_none(job.started_at) if job else None,
        completed_at=as_utc_or_none(job.finished_at) if job else None,
        name=upload.name,
        trigger_word=row.trigger_word,
        validation_image_url=sign(row.validation_key) if sign and row.validation_key else None,
        validation_step=row.validation_step if sign and row.validation_key else None,
    )


def _with_upload_and_job() -> Any:
    return (
        select(LoraTrainingRow, Upload, Job)
        .join(Upload, Upload.id == LoraTrainingRow.upload_id)
        .outerjoin(Job, Job.id == LoraTrainingRow.job_id)
    )


async def get_training(
    session: AsyncSession,
    user_id: str,
    upload_id: str,
    *,
    sign: Callable[[str], str] | None = None,
) -> LoraTraining | None:
    """The caller's training of ``upload_id``, or None."""
    found = (
        await session.execute(
            _with_upload_and_job().where(
                LoraTrainingRow.upload_id == upload_id, LoraTrainingRow.user_id == user_id
            )
        )
    ).first()
    return None if found is None else training_view(*found, sign=sign)


async def list_trainings(
    session: AsyncSession,
    user_id: str,
    limit: int,
    offset: int,
    *,
    sign: Callable[[str], str] | None = None,
) -> LoraTrainingList:
    """A page of the caller's trainings, newest first."""
    total = await session.scalar(
        select(func.count()).select_from(LoraTrainingRow).where(LoraTrainingRow.user_id == user_id)
    )
    rows = await session.execute(
        _with_upload_and_job()
        .where(LoraTrainingRow.user_id == user_id)
        .order_by(LoraTrainingRow.created_at.desc(), LoraTrainingRow.id)
        .limit(limit)
        .offset(offset)
    )
    return LoraTrainingList(
        trainings=[training_view(*r, sign=sign) for r in rows.all()],
        total=int(total or 0),
        limit=limit,
        offset=offset,
    )


async def start_training(
    services: ImageServices, session: AsyncSession, user_id: str, upload_id: str
) -> LoraTraining:
    """Queue the training of an upload whose zip passed its inspection (the report kept on
    the upload row); an upload already training returns its record."""
    upload = await get_owned_upload(session, user_id, upload_id, UploadKind.LORA)
    if upload is None:
        raise NotFound("LoRA upload not found")
    existing = await get_training(session, user_id, upload_id)
    if existing is not None and existing.status not in _RETRYABLE:
        return existing
    limits = settings_of(services).zip
    if upload.status == UploadStatus.PENDING.value:
        if not services.storage.direct_uploads:
            raise Rejected("nothing uploaded yet: PUT the zip to its upload URL first")
        # The zip went straight to object storage: the checks the engine's own PUT makes
        # run now, on a downloaded copy (a refused zip is deleted; a fixed one can be PUT),
        # and that one inspection's report is kept, as the PUT route keeps its own.
        check = InspectingCheck(limits)
        await receive_direct_upload(session, services.storage, services.settings, upload, check)
        if check.kept is not None:
            await _keep_report(session, upload, check.kept)
    else:
        await _check_zip_again(services, session, upload, limits)
    if existing is None:
        if not await mark_upload(
            session, upload.id, UploadStatus.PROCESSED, expect=UploadStatus.UPLOADED
        ):
            raced = await get_training(session, user_id, upload_id)
            if raced is not None:
                return raced
            raise Conflict(f"upload is {upload.status}; it cannot be trained")
        row = LoraTrainingRow(
            user_id=user_id, upload_id=upload.id, trigger_word=upload.trigger_word or ""
        )
        session.add(row)
        try:
            await session.commit()
        except IntegrityError:  # a concurrent request created it first
            await session.rollback()
            raced = await get_training(session, user_id, upload_id)
            if raced is None:
                raise
            return raced
        training_id, previous_job = row.id, None
    else:
        training_id = existing.id
        previous_job = await session.scalar(
            select(LoraTrainingRow.job_id).where(LoraTrainingRow.id == training_id)
        )
    job = await services.jobs.submit(
        TRAIN_KIND,
        {
            "training_id": training_id,
            "upload_id": upload.id,
            "trigger_word": upload.trigger_word or "",
        },
        user_id,
    )
    same_job = (
        LoraTrainingRow.job_id.is_(None)
        if previous_job is None
        else LoraTrainingRow.job_id == previous_job
    )
    res = await session.execute(
        update(LoraTrainingRow)
        .where(LoraTrainingRow.id == training_id, same_job)
        .values(job_id=job.id, lora_key=None)
    )
    await session.commit()
    if not res.rowcount:  # type: ignore[attr-defined]
        # A concurrent retry attached its job first; this one must not run.
        await services.jobs.cancel(job.id)
    view = await get_training(session, user_id, upload_id)
    assert view is not None
    return view


async def _check_zip_again(
    services: ImageServices, session: AsyncSession, upload: Upload, limits: ZipLimits
) -> None:
    """Before (re)training: the kept inspection report when it still describes the stored
    bytes, else one inspection now, kept. A bad zip stays replaceable."""
    cap = size_cap(services.settings, upload.kind)
    kept = KeptReport.from_json(upload.inspection)

    def still_or_again() -> tuple[KeptReport, bool]:
        with services.storage.local_upload(upload.id, cap) as path:
            if kept is not None and kept.describes(path):
                return kept, False
            # Bytes no kept report describes (stored before reports were kept, or
            # replaced since): inspected now, once.
            return inspect(path, limits), True

    try:
        report, fresh = await anyio.to_thread.run_sync(still_or_again)
    except NotStored as exc:
        raise Rejected("the uploaded zip is missing; request a new upload URL") from exc
    except TooLarge as exc:
        raise TooLargeUpload(too_large_detail(cap)) from exc
    if fresh:
        await _keep_report(session, upload, report)
    if not report.report.ok:
        # The upload stays replaceable: a fixed zip can be PUT to the same URL.
        summary = report.report.summary()
        await mark_upload(session, upload.id, UploadStatus(upload.status), summary)
        raise Rejected(summary)


async def _keep_report(session: AsyncSession, upload: Upload, kept: KeptReport) -> None:
    await session.execute(
        update(Upload).where(Upload.id == upload.id).values(inspection=kept.to_json())
    )
    await session.commit()


async def find_lora(session: AsyncSession, user_id: str, lora_id: str) -> LoraTrainingRow | None:
    """The caller's LoRA by its id (the training id) or by its upload id."""
    row: LoraTrainingRow | None = await session.scalar(
        select(LoraTrainingRow).where(
            LoraTrainingRow.user_id == user_id,
            or_(LoraTrainingRow.id == lora_id, LoraTrainingRow.upload_id == lora_id),
        )
    )
    return row


async def ready_lora(session: AsyncSession, user_id: str, lora_id: str) -> LoraTrainingRow:
    """A LoRA whose training succeeded; 404 when unknown, 400 while not ready."""
    row = await find_lora(session, user_id, lora_id)
    if row is None:
        raise NotFound("LoRA not found")
    job = await session.get(Job, row.job_id) if row.job_id else None
    status = TrainingStatus.of_job(job.status if job else None)
    if status is not TrainingStatus.SUCCEEDED or not row.lora_key:
        hint = {
            TrainingStatus.STARTING: "it is waiting to start",
            TrainingStatus.PROCESSING: f"it is training ({job.progress if job else 0}%)",
            TrainingStatus.FAILED: "its training failed; start it again",
            TrainingStatus.CANCELED: "its training was canceled; start it again",
        }.get(status, "it is not trained")
        raise Rejected(f"this LoRA cannot generate yet: {hint}")
    return row


def generation_view(services: ImageServices, base: str, row: LoraGenerationRow) -> LoraGeneration:
    """A generation row as the API shows it, with a fresh signed URL."""
    return LoraGeneration(
        id=row.id,
        url=services.artifact_url(base, row.image_key),
        prompt=row.prompt,
        enhanced_prompt=row.enhanced_prompt,
        negative_prompt=row.negative_prompt,
        created_at=as_utc(row.created_at),
        lora_id=row.training_id,
        upload_id=row.upload_id,
        demo=row.demo,
        seed=row.seed,
        width=row.width,
        height=row.height,
        model=row.model,
        variation_of=row.variation_of,
        parent_id=row.parent_id,
        operation=ImageOperation(row.operation) if row.operation else None,
    )


async def _variation_payload(
    session: AsyncSession,
    user_id: str,
    request: GenerateLoraRequest,
    lora: LoraTrainingRow | None,
    demo: str | None,
) -> dict[str, Any]:
    """What a variation takes from its parent; 422 when the request cannot be one."""
    assert request.variation_of is not None
    for field in ("seed", "negative_prompt", "aspect_ratio"):
        if getattr(request, field) is not None:
            raise InvalidField(
                "body",
                field,
                f"a variation takes {field} from the generation it varies; leave {field} out",
                getattr(request, field),
            )
    parent = await session.get(LoraGenerationRow, request.variation_of)
    if parent is None or parent.user_id != user_id:
        # Another member's id reads as absent, as everywhere.
        raise InvalidField(
            "body", "variation_of", "no generation of yours has this id", request.variation_of
        )
    if (parent.training_id, parent.demo) != (lora.id if lora else None, demo):
        raise InvalidField(
            "body",
            "variation_of",
            "that generation was drawn with another LoRA; vary it through its own LoRA's path",
            request.variation_of,
        )
    if request.prompt != parent.prompt:
        raise InvalidField(
            "body",
            "prompt",
            f"a variation keeps its parent's prompt: send {parent.prompt!r}",
            request.prompt,
        )
    return {
        "seed": _new_seed(parent.seed),
        "variation_of": parent.id,
        "enhanced_prompt": parent.enhanced_prompt,
        "full_negative_prompt": parent.negative_prompt,
        "enhancer": parent.enhancer,
        "width": parent.width,
        "height": parent.height,
    }


async def run_generation(
    services: ImageServices,
    session: AsyncSession,
    base: str,
    user_id: str,
    request: GenerateLoraRequest,
    *,
    lora: LoraTrainingRow | None = None,
    demo: str | None = None,
) -> LoraGeneration:
    """Queue one generation, wait for it (the contract is synchronous), answer it.

    The engine extensions of ``request`` (seed, negative prompt, aspect ratio, variation)
    travel in the job's payload; the worker maps the aspect ratio to its model's sizes.
    """
    if settings_of(services).enhancer.refuse_explicit:
        term = explicit_term(request.prompt)
        if term is not None:
            # Before any job: no queue slot, no GPU time for an image that is not drawn.
            raise InvalidField(
                "body",
                "prompt",
                f"the prompt asks for explicit content ({term!r}); this engine does not draw it",
                request.prompt,
            )
    generation_id = new_id()
    payload: dict[str, Any] = {"generation_id": generation_id, "prompt": request.prompt}
    if request.variation_of is not None:
        payload |= await _variation_payload(session, user_id, request, lora, demo)
    else:
        payload["seed"] = (
            request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        )
        negative = (request.negative_prompt or "").strip()
        if negative:
            payload["negative_prompt"] = negative
        if request.aspect_ratio is not None:
            payload["aspect_ratio"] = request.aspect_ratio
    if lora is not None:
        payload |= {
            "training_id": lora.id,
            "upload_id": lora.upload_id,
            "lora_key": lora.lora_key,
            "trigger_word": lora.trigger_word,
        }
    if demo is not None:
        payload["demo"] = demo
    return await _draw(services, session, base, user_id, payload, generation_id, "generation")


async def _draw(
    services: ImageServices,
    session: AsyncSession,
    base: str,
    user_id: str,
    payload: dict[str, Any],
    generation_id: str,
    what: str,
) -> LoraGeneration:
    """Queue the drawing job ``payload`` describes and wait for it; the image it recorded as
    ``generation_id`` (``what``, e.g. "generation" or "upscale", names it in a failure)."""
    done = await submit_and_wait(
        services.jobs,
        session,
        GENERATE_KIND,
        payload,
        user_id,
        within=services.settings.jobs.wait_timeout_seconds,
        still_running="the image is still being drawn; it will appear in "
        f"GET /api/loras/generations as {generation_id}",
    )
    if done.status != JobStatus.SUCCEEDED.value:
        raise JobOutcomeError(f"{what} {done.status}: {done.error or 'no reason given'}")
    row = await session.get(LoraGenerationRow, generation_id)
    if row is None:  # pragma: no cover - the handler writes it before succeeding
        raise JobOutcomeError(f"the {what} finished without a record")
    return generation_view(services, base, row)


def _new_seed(old: int) -> int:
    """A random seed other than ``old`` (a variation must not draw its parent again)."""
    seed = old
    while seed == old:
        seed = secrets.randbelow(MAX_SEED + 1)
    return seed


async def run_refinement(
    services: ImageServices,
    session: AsyncSession,
    base: str,
    user_id: str,
    image_id: str,
    operation: ImageOperation,
) -> LoraGeneration:
    """Upscale or vary one of the caller's images (img2img with its base model, its LoRA or
    demo, and its prompt as enhanced, with a new seed); waits for the image like a generation,
    through the same job queue and pending-job cap. Another member's image is 404."""
    parent = await session.get(LoraGenerationRow, image_id)
    if parent is None or parent.user_id != user_id:
        raise NotFound("image not found")
    cfg = settings_of(services)
    gen = cfg.generation
    width, height = parent.width, parent.height
    if operation is ImageOperation.UPSCALE:
        width, height = 2 * width, 2 * height
        if width * height > gen.max_upscale_pixels:
            raise Rejected(
                f"this image is {parent.width}x{parent.height}: twice that ({width}x{height}) "
                f"is more than this engine draws ({gen.max_upscale_pixels} pixels)"
            )
    strength = {
        ImageOperation.UPSCALE: gen.upscale_strength,
        ImageOperation.VARY_SUBTLE: gen.vary_subtle_strength,
        ImageOperation.VARY_STRONG: gen.vary_strong_strength,
    }[operation]
    generation_id = new_id()
    payload: dict[str, Any] = {
        "generation_id": generation_id,
        "prompt": parent.prompt,
        # The parent's prompt as the model got it: no second enhancement.
        "enhanced_prompt": parent.enhanced_prompt,
        "full_negative_prompt": parent.negative_prompt,
        "enhancer": parent.enhancer,
        "seed": _new_seed(parent.seed),
        "width": width,
        "height": height,
        "source_key": parent.image_key,
        "strength": strength,
        "operation": operation.value,
        "parent_id": parent.id,
    }
    if parent.training_id is not None:
        lora = await ready_lora(session, user_id, parent.training_id)
        payload |= {
            "training_id": lora.id,
            "upload_id": lora.upload_id,
            "lora_key": lora.lora_key,
            "trigger_word": lora.trigger_word,
        }
    elif parent.demo is not None:
        demo = cfg.demos.get(parent.demo)
        if demo is None or not demo.lora_path.is_file():
            raise Rejected(f"the {parent.demo} demo is not set up on this engine any more")
        payload["demo"] = parent.demo
    else:  # pragma: no cover - every generation has a LoRA or a demo
        raise Rejected("this image has no LoRA to draw it again with")
    return await _draw(services, session, base, user_id, payload, generation_id, operation.value)


async def list_generations(
    services: ImageServices,
    session: AsyncSession,
    base: str,
    user_id: str,
    *,
    training_id: str | None,
    limit: int,
    offset: int,
) -> list[LoraGeneration]:
    """The caller's generations, newest first (one LoRA's when ``training_id`` is given)."""
    query = select(LoraGenerationRow).where(LoraGenerationRow.user_id == user_id)
    if training_id is not None:
        query = query.where(LoraGenerationRow.training_id == training_id)
    rows = await session.scalars(
        query.order_by(LoraGenerationRow.created_at.desc(), LoraGenerationRow.id)
        .limit(limit)
        .offset(offset)
    )
    return [generation_view(services, base, r) for r in rows]


async def get_generation(
    services: ImageServices, session: AsyncSession, base: str, user_id: str, generation_id: str
) -> LoraGeneration:
    """One of the caller's generations; 404 otherwise."""
    row = await session.get(LoraGenerationRow, generation_id)
    if row is None or row.user_id != user_id:
        raise NotFound("generation not found")
    return generation_view(services, base, row)
