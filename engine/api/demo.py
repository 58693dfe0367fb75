"""``/api/demo``: the two community demo models (a configured LoRA each)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from engine.api.deps import BaseUrl, CurrentUser, Services, Session
from engine.image import service as image_service
from engine.image.schemas import GenerateLoraRequest, LoraGeneration
from engine.services import EngineServices

router = APIRouter(prefix="/api/demo", tags=["demo"])


def _require_demo(services: EngineServices, name: str) -> None:
    demo = image_service.settings_of(services).demos.get(name)
    if demo is None:
        raise HTTPException(
            503,
            f"the {name} demo is not configured: set [engine.image.demos.{name}] with "
            f"lora_path = '<a LoRA .safetensors trained on this engine's base model>' and "
            f"trigger_word = '<its trigger word>' in the engine's config.toml, then restart",
        )
    if not demo.lora_path.is_file():
        raise HTTPException(
            503,
            f"the {name} demo's LoRA file {demo.lora_path} is missing: fix "
            f"[engine.image.demos.{name}] lora_path in the engine's config.toml",
        )


async def _demo(
    name: str,
    body: GenerateLoraRequest,
    user_id: str,
    services: EngineServices,
    session: Session,
    base: str,
) -> LoraGeneration:
    _require_demo(services, name)
    return await image_service.run_generation(services, session, base, user_id, body, demo=name)


@router.post("/tadz", response_model=LoraGeneration)
async def demo_tadz(
    body: GenerateLoraRequest,
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
) -> LoraGeneration:
    """Generate an image of Tadz with the demo LoRA and the prompt enhancer."""
    return await _demo("tadz", body, user.id, services, session, base)


@router.post("/pudgy", response_model=LoraGeneration)
async def demo_pudgy(
    body: GenerateLoraRequest,
    user: CurrentUser,
    services: Services,
    session: Session,
    base: BaseUrl,
) -> LoraGeneration:
    """Generate a Pudgy image with the demo LoRA and the prompt enhancer."""
    return await _demo("pudgy", body, user.id, services, session, base)
