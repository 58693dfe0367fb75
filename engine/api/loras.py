"""``/api/loras``: image zips, trainings and generations."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from engine.api.deps import BaseUrl, CurrentUser, Services, Session
from engine.api.upload_urls import issue_upload_url
from engine.image import service as image_service
from engine.image.schemas import GenerateLoraRequest, LoraGeneration, LoraTraining, LoraTrainingList
from engine.models import UploadKind
from engine.schemas import MAX_OFFSET, LoraUpload, UploadUrlResponse
from engine.uploads import list_uploads

router = APIRouter(prefix="/api/loras", tags=["loras"])


@router.post("/uploads/url", response_model=UploadUrlResponse)
async def create_upload_url(
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
    name: Annotated[str, Query(max_length=100)],
    trigger_word: Annotated[str, Query(max_length=50)],
    file_name: Annotated[str, Query(max_length=255)],
) -> UploadUrlResponse:
    """A pre-signed URL to PUT a zip of training images to."""
    return await issue_upload_url(
        services,
        session,
        base,
        user_id=user.id,
        kind=UploadKind.LORA,
        name=name,
        file_name=file_name,
        trigger_word=trigger_word,
    )


@router.get("/uploads", response_model=list[LoraUpload])
async def list_lora_uploads(user: CurrentUser, session: Session) -> list[LoraUpload]:
    """The caller's image zips, newest first."""
    return [
        LoraUpload.model_validate(u) for u in await list_uploads(session, user.id, UploadKind.LORA)
    ]


# Route order matters: the fixed paths (/trainings, /generations/...) come before the
# per-LoRA paths (/{lora_id}/generations) so that "generations" is never read as an id.

Limit = Annotated[int, Query(ge=1, le=100, description="Number of items to return")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Offset for pagination")]


@router.post("/trainings/{upload_id}", status_code=202, response_model=LoraTraining)
async def train_lora(
    upload_id: str, user: CurrentUser, services: Services, session: Session
) -> LoraTraining:
    """Start training a LoRA on an uploaded zip; answers at once (poll the status).

    A zip that cannot be used is 400 with every problem listed. Starting an upload that is
    already training or trained returns its existing record.
    """
    return await image_service.start_training(services, session, user.id, upload_id)


@router.get("/trainings", response_model=LoraTrainingList)
async def list_lora_trainings(
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
    limit: Limit = 20,
    offset: Offset = 0,
) -> LoraTrainingList:
    """The caller's trainings, newest first."""
    return await image_service.list_trainings(
        session, user.id, limit, offset, sign=partial(services.artifact_url, base)
    )


@router.get("/trainings/{upload_id}", response_model=LoraTraining)
async def get_lora_training(
    upload_id: str, user: CurrentUser, services: Services, session: Session, base: BaseUrl
) -> LoraTraining:
    """Status and progress of the training of one upload (with the engine extensions
    ``validation_image_url`` / ``validation_step``: the latest checkpoint's image)."""
    training = await image_service.get_training(
        session, user.id, upload_id, sign=partial(services.artifact_url, base)
    )
    if training is None:
        raise HTTPException(404, "no training for this upload")
    return training


@router.get("/generations", response_model=list[LoraGeneration])
async def list_all_generations(
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
    limit: Limit = 20,
    offset: Offset = 0,
) -> list[LoraGeneration]:
    """Every image the caller generated (LoRAs and demos), newest first."""
    return await image_service.list_generations(
        services, session, base, user.id, training_id=None, limit=limit, offset=offset
    )


@router.get("/generations/{generation_id}", response_model=LoraGeneration)
async def get_generation(
    generation_id: str, user: CurrentUser, services: Services, session: Session, base: BaseUrl
) -> LoraGeneration:
    """One generated image."""
    return await image_service.get_generation(services, session, base, user.id, generation_id)


@router.post("/generations/{upload_id}", response_model=LoraGeneration)
async def generate_with_upload(
    upload_id: str,
    body: GenerateLoraRequest,
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
) -> LoraGeneration:
    """Generate an image with the LoRA trained on ``upload_id`` (waits for the image)."""
    lora = await image_service.ready_lora(session, user.id, upload_id)
    return await image_service.run_generation(services, session, base, user.id, body, lora=lora)


@router.post("/{lora_id}/generations", response_model=LoraGeneration)
async def generate_with_lora(
    lora_id: str,
    body: GenerateLoraRequest,
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
) -> LoraGeneration:
    """Generate an image with a LoRA (its training id or its upload id; waits for the image)."""
    lora = await image_service.ready_lora(session, user.id, lora_id)
    return await image_service.run_generation(services, session, base, user.id, body, lora=lora)


@router.get("/{lora_id}/generations", response_model=list[LoraGeneration])
async def list_lora_generations(
    lora_id: str,
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
    limit: Limit = 20,
    offset: Offset = 0,
) -> list[LoraGeneration]:
    """The images generated with one LoRA, newest first."""
    lora = await image_service.find_lora(session, user.id, lora_id)
    if lora is None:
        raise HTTPException(404, "LoRA not found")
    return await image_service.list_generations(
        services, session, base, user.id, training_id=lora.id, limit=limit, offset=offset
    )
