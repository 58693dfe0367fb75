"""``/api/images``: upscale and vary a generated image. Engine extensions (the hosted Ta-da
API has neither), marked ``x-tada-extension`` in ``/openapi.json``.

Both are img2img from one of the caller's generations (a LoRA or a demo image) with its base
model, LoRA and prompt, a new seed; they wait for the image like a generation, through the
same queue and pending-job cap, and answer it with ``parent_id`` and ``operation``.
"""

from __future__ import annotations

from fastapi import APIRouter

from engine.api.deps import BaseUrl, CurrentUser, Services, Session
from engine.image import service as image_service
from engine.image.schemas import EXTENSION, ImageOperation, LoraGeneration, VaryRequest

router = APIRouter(prefix="/api/images", tags=["images (engine extension)"])
_NOT_HOSTED = "Engine extension (not in the hosted Ta-da API). "


@router.post(
    "/{image_id}/upscale",
    response_model=LoraGeneration,
    openapi_extra=EXTENSION,
    description=_NOT_HOSTED + "The image at twice its width and height: resized, then "
    "redrawn lightly (low-strength img2img) with its base model, LoRA and prompt. Waits for "
    "the image. 404: not one of your images; 400: past the engine's largest size.",
)
async def upscale_image(
    image_id: str, user: CurrentUser, services: Services, session: Session, base: BaseUrl
) -> LoraGeneration:
    """Upscale one of your images 2x."""
    return await image_service.run_refinement(
        services, session, base, user.id, image_id, ImageOperation.UPSCALE
    )


@router.post(
    "/{image_id}/vary",
    response_model=LoraGeneration,
    openapi_extra=EXTENSION,
    description=_NOT_HOSTED + "A variation of the image at its size: img2img with its base "
    "model, LoRA and prompt and a new seed, subtle (details change) or strong (much is "
    "redrawn). Waits for the image. 404: not one of your images.",
)
async def vary_image(
    image_id: str,
    body: VaryRequest,
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
) -> LoraGeneration:
    """Vary one of your images, subtly or strongly."""
    return await image_service.run_refinement(
        services, session, base, user.id, image_id, ImageOperation.vary(body.strength)
    )
