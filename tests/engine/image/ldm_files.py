"""A diffusers SD 1.x pipeline written as an original (LDM) single-file checkpoint, the
layout community checkpoints have: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*``
(VAE), ``cond_stage_model.transformer.text_model.*`` (CLIP). diffusers reads such files
(``from_single_file``) but ships no writer; this is the inverse of its conversion, for the
tiny test models (any number of blocks and layers per block)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def _unet_map(unet: Any) -> list[tuple[str, str]]:
    cfg = unet.config
    n, lpb = len(cfg.block_out_channels), cfg.layers_per_block
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
    ]
    for j in range(2):
        pairs.append((f"mid_block.resnets.{j}.", f"middle_block.{2 * j}."))
    for i in range(n):
        for j in range(lpb):
            pairs.append(
                (f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(lpb + 1) * i + j + 1}.0.")
            )
            pairs.append(
                (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(lpb + 1) * i + j + 1}.1.")
            )
        for j in range(lpb + 1):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(lpb + 1) * i + j}.0."))
            pairs.append(
                (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(lpb + 1) * i + j}.1.")
            )
        if i < n - 1:
            pairs.append(
                (
                    f"down_blocks.{i}.downsamplers.0.conv.",
                    f"input_blocks.{(lpb + 1) * (i + 1)}.0.op.",
                )
            )
            has_attn = "CrossAttn" in cfg.up_block_types[i]
            pairs.append(
                (
                    f"up_blocks.{i}.upsamplers.0.",
                    f"output_blocks.{(lpb + 1) * i + lpb}.{2 if has_attn else 1}.",
                )
            )
    return pairs


_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]


def unet_to_ldm(unet: Any) -> dict[str, torch.Tensor]:
    out = {}
    pairs = _unet_map(unet)
    for key, value in unet.state_dict().items():
        new = key
        for hf, sd in pairs:
            if new.startswith(hf):
                new = sd + new[len(hf) :]
                break
        else:
            raise KeyError(key)
        if "resnets" in key:
            for hf, sd in _RESNET:
                new = new.replace(f".{hf}.", f".{sd}.")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(vae: Any) -> dict[str, torch.Tensor]:
    n = len(vae.config.block_out_channels)
    pairs = [
        ("encoder.mid_block.attentions.0.", "encoder.mid.attn_1."),
        ("decoder.mid_block.attentions.0.", "decoder.mid.attn_1."),
        ("encoder.conv_norm_out.", "encoder.norm_out."),
        ("decoder.conv_norm_out.", "decoder.norm_out."),
    ]
    for part in ("encoder", "decoder"):
        for j in range(2):
            pairs.append((f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}."))
    for i in range(n):
        for j in range(vae.config.layers_per_block + 1):
            pairs.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
            pairs.append(
                (f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}.")
            )
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    attn = [
        ("group_norm.", "norm."),
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
    ]
    out = {}
    for key, value in vae.state_dict().items():
        new = key
        for hf, sd in pairs:
            if new.startswith(hf):
                new = sd + new[len(hf) :]
                break
        new = new.replace("conv_shortcut", "nin_shortcut")
        if ".attn_1." in new:
            for hf, sd in attn:
                if new.split(".attn_1.", 1)[1].startswith(hf):
                    head, tail = new.split(".attn_1.", 1)
                    new = f"{head}.attn_1.{sd}{tail[len(hf) :]}"
                    break
            if value.ndim == 2:
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def write_sd15_single_file(pipe: Any, path: Path) -> Path:
    state = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    state.update(
        {
            f"cond_stage_model.transformer.text_model.{k}": v
            for k, v in pipe.text_encoder.state_dict().items()
        }
    )
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
