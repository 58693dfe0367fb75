"""The built-in tiny random-weight models: SD 1.5-, SDXL- and FLUX.1-shaped pipelines.

Tests and development only (they draw noise): every code path of
:class:`engine.image.pipeline.ImageModel` runs on a CPU with them, and the engine uses one
when no ``[engine.image] base_model`` is set. Seeded, so every worker builds the same weights.
Only diffusers, transformers, the offline tokenizers and the process-wide loading lock
(:mod:`engine.model_loading`: the weights are drawn from torch's global RNG, and modules must
not be built while another thread loads a model) are imported here, so the model code
(``pipeline``, ``flux``) can import this module without a circle.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from engine.image.offline_tokenizers import TINY_T5_TOKENS, offline_t5_tokenizer, offline_tokenizer
from engine.model_loading import loading_models

# diffusers' lazy exports read as dummy classes to mypy (as in engine.image.pipeline).
Pipeline = Any
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
    with loading_models(), torch.random.fork_rng(devices=[]):
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


def _tiny_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _tiny_vae(resolution: int) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=resolution,
    )


def _tiny_text_config(vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        projection_dim=32,
    )


def build_tiny_pipeline(seed: int, resolution: int, arch: str = "sd15") -> Pipeline:
    """A Stable Diffusion-shaped pipeline with random weights: tests and development only.

    ``arch`` is ``sd15`` (one text encoder), ``sdxl`` (two, pooled embeddings and size
    conditioning) or ``flux`` (:func:`build_tiny_flux`), so every code path
    runs on a CPU. Seeded, so every worker builds the
    same weights and a LoRA trained by one process fits the base of another. It draws
    noise, by design.
    """
    with loading_models():
        return _build_tiny(seed, resolution, arch)


def _build_tiny(seed: int, resolution: int, arch: str) -> Pipeline:
    if arch == "sdxl":
        return _build_tiny_xl(seed, resolution)
    if arch == "flux":
        return build_tiny_flux(seed, resolution)
    tokenizer = offline_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=resolution // 2,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = _tiny_vae(resolution)
        text_encoder = CLIPTextModel(_tiny_text_config(len(tokenizer)))
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=_tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_tiny_xl(seed: int, resolution: int) -> Pipeline:
    tokenizer = offline_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=resolution // 2,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            # 6 size/crop ids x 8 + the pooled text embedding (32).
            projection_class_embeddings_input_dim=6 * 8 + 32,
            # Both text encoders' hidden states side by side.
            cross_attention_dim=64,
            norm_num_groups=32,
        )
        vae = _tiny_vae(resolution)
        text_encoder = CLIPTextModel(_tiny_text_config(len(tokenizer)))
        text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config(len(tokenizer)))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=offline_tokenizer(),
        unet=unet,
        scheduler=_tiny_scheduler(),
    )
