"""FLUX.1: the architecture read from a checkpoint, and the flow-matching pieces the training
loop needs (packing latents into tokens, the noisy input and its target). Its tiny random model
is :func:`engine.image.tiny.build_tiny_flux`.

FLUX is a rectified-flow transformer (``FluxTransformer2DModel``) over 16-channel VAE latents
packed in 2x2 patches, conditioned on T5 token embeddings and a pooled CLIP embedding; FLUX.1
dev also takes a distilled guidance value, schnell does not. Blocking torch code, used by
:class:`engine.image.pipeline.ImageModel`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxPipeline

from engine.image.types import ModelError

# diffusers' lazy exports read as dummy classes to mypy (as in engine.image.pipeline).
Pipeline = Any
# Architectures the engine knows, as ``ImageModel.arch`` names them.
ARCHES = ("sd15", "sdxl", "flux")
_PIPELINE_ARCH = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "FluxPipeline": "flux",
}
# The guidance value FLUX.1 dev's guidance embedding gets while training: 1, as ostris
# ai-toolkit trains it (the LoRA then works across the guidance values people generate at).
TRAIN_GUIDANCE = 1.0


def arch_of_folder(path: Path) -> str:
    """``sd15``, ``sdxl`` or ``flux`` from a diffusers folder's ``model_index.json``."""
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: no readable model_index.json ({exc})") from exc
    cls_name = str(index.get("_class_name", ""))
    if cls_name not in _PIPELINE_ARCH:
        raise ModelError(
            f"{path}: unsupported pipeline {cls_name!r}; use an SD 1.5, SDXL or FLUX.1 one"
        )
    return _PIPELINE_ARCH[cls_name]


def arch_of_single_file(path: Path) -> str:
    """``sd15``, ``sdxl`` or ``flux`` from a single-file checkpoint's tensor names (not its
    name): diffusers' own detection over the keys, read without loading any tensor."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors import safe_open

    class _Keys(dict[str, Any]):
        # infer_diffusers_model_type reads a few shapes: load only the tensors it reads.
        def __init__(self, handle: Any) -> None:
            names = handle.keys()
            super().__init__(dict.fromkeys(names))
            self._handle = handle

        def __getitem__(self, key: str) -> Any:
            return self._handle.get_tensor(key)

    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES

    try:
        with safe_open(str(path), "pt") as fh:
            keys = _Keys(fh)
            kind = str(infer_diffusers_model_type(keys))
    except Exception as exc:
        raise ModelError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    if kind in ("flux-dev", "flux-schnell"):
        return "flux"
    if kind == "xl_base":
        return "sdxl"
    # diffusers answers "v1" for anything it does not know: check for an LDM UNet (its
    # last output block's key, or for UNets with fewer blocks the first input block's).
    ldm_unet = (CHECKPOINT_KEY_NAMES["v1"], "model.diffusion_model.input_blocks.0.0.weight")
    if kind == "v1" and any(k in keys for k in ldm_unet):
        return "sd15"
    raise ModelError(
        f"{path}: not an SD 1.5, SDXL or FLUX.1 (dev/schnell) checkpoint "
        f"(diffusers reads it as {kind!r})"
    )


def max_sequence_length(pipe: Pipeline) -> int:
    """T5 tokens per prompt: 512 for dev, 256 for schnell (its limit), less for a tiny T5."""
    limit = 512 if pipe.transformer.config.guidance_embeds else 256
    return int(min(limit, pipe.tokenizer_2.model_max_length))


def encode(
    pipe: Pipeline, prompts: list[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """T5 token embeddings, pooled CLIP embeddings, and the text position ids."""
    embeds, pooled, text_ids = pipe.encode_prompt(
        prompts,
        prompt_2=None,
        device=device,
        num_images_per_prompt=1,
        max_sequence_length=max_sequence_length(pipe),
    )
    return embeds, pooled, text_ids


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents as FLUX's tokens: (B, H/2 * W/2, C * 4)."""
    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def draw_sigmas(n: int, gen: torch.Generator) -> torch.Tensor:
    """Noise levels in (0, 1), logit-normal: SD3's and FLUX trainers' default weighting,
    most steps spent at middle noise where the subject's shape is decided."""
    return torch.sigmoid(torch.randn((n,), generator=gen))


def flow_predict(
    pipe: Pipeline,
    latents: torch.Tensor,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    embeds: torch.Tensor,
    pooled: torch.Tensor,
    text_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The transformer's velocity prediction at ``sigmas`` and its rectified-flow target.

    The noisy input is ``(1 - s) * x + s * noise``; the velocity that carries it to the
    image is ``noise - x``. Both come back packed (a loss compares them token by token).
    """
    b, _, h, w = latents.shape
    s = sigmas.to(latents.device, latents.dtype).view(-1, 1, 1, 1)
    noisy = (1.0 - s) * latents + s * noise
    transformer = pipe.transformer
    guidance = None
    if transformer.config.guidance_embeds:
        guidance = torch.full((b,), TRAIN_GUIDANCE, device=latents.device, dtype=torch.float32)
    img_ids = FluxPipeline._prepare_latent_image_ids(
        b, h // 2, w // 2, latents.device, embeds.dtype
    )
    pred = transformer(
        hidden_states=pack(noisy),
        timestep=sigmas.to(latents.device, latents.dtype),
        guidance=guidance,
        pooled_projections=pooled,
        encoder_hidden_states=embeds,
        txt_ids=text_ids,
        img_ids=img_ids,
        return_dict=False,
    )[0]
    return pred, pack(noise - latents)
