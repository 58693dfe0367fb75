"""FLUX.1: the tiny random model, the architecture read from a checkpoint, and the flow-matching
pieces the training loop needs (packing latents into tokens, the noisy input and its target).

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
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from engine.image.offline_tokenizers import TINY_T5_TOKENS, offline_t5_tokenizer, offline_tokenizer
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
# Tiny model sizes: a 32-wide T5 and CLIP, a one-block transformer (double and single).
_TINY_WIDTH = 32


def build_tiny_flux(seed: int, resolution: int) -> Pipeline:
    """A FLUX.1-dev-shaped pipeline with random weights: tests and development only.

    Everything FLUX has, small: a transformer with one double and one single block and the
    guidance embedding, a tiny T5 and CLIP, an AutoencoderKL with FLUX's 16 latent channels
    (and its scaling and shift factors). Seeded like the SD tiny models. It draws noise.
    """
    clip_tok = offline_tokenizer()
    t5_tok = offline_t5_tokenizer(TINY_T5_TOKENS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16 * 4,  # 16 latent channels in 2x2 patches
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=_TINY_WIDTH,
            pooled_projection_dim=_TINY_WIDTH,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=16,
            norm_num_groups=32,
            sample_size=resolution,
            use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=0.3611,
            shift_factor=0.1159,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
                hidden_size=_TINY_WIDTH,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                vocab_size=len(clip_tok),
                max_position_embeddings=77,
                projection_dim=_TINY_WIDTH,
            )
        )
        text_encoder_2 = T5EncoderModel(
            T5Config(
                d_model=_TINY_WIDTH,
                d_ff=37,
                d_kv=8,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                vocab_size=len(t5_tok),
                pad_token_id=0,
                eos_token_id=1,
            )
        )
    parts: list[Any] = [transformer, vae, text_encoder, text_encoder_2]
    for module in parts:
        module.eval()  # as from_pretrained leaves them: no dropout
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tok,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )


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
