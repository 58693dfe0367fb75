"""GPU benchmark of the image back end at full size, nothing downloaded (issue 19).

Builds SDXL and FLUX.1 dev pipelines from their published configs (``bench/configs/``, the
architecture only) with random weights directly on the GPU in bf16, then through the
engine's own :class:`ImageModel`:

- seconds per 1024x1024 image (SDXL 30 steps with CFG, FLUX 28 steps at guidance 3.5);
- seconds per Upscale 2x (1024 -> 2048, img2img at the engine's upscale strength) and per
  Vary subtle / strong (img2img at 1024), from the same loaded modules (``from_pipe``);
- LoRA training steps/s at 1024 (bucketed, cached latents and text embeddings), without the
  memory options and with them (gradient checkpointing, 8-bit AdamW when bitsandbytes is
  importable);
- peak VRAM of each.

Random weights draw noise, but the arithmetic is the real models': the timings and memory
are what a pulled checkpoint costs. ``--dry-run`` runs the same code on this machine's CPU
with the tiny random models at 32 px (and checks the full-size configs build, on the meta
device, counting their parameters). Results: bench/results/lora_gpu.json (dry run:
lora_gpu-dryrun.json).

    python bench/lora_gpu.py                 # on a CUDA machine (bench/lora_gpu.sh)
    python bench/lora_gpu.py --dry-run       # anywhere, a minute on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lora import device_name, sample_images, sync
from engine.image.offline_tokenizers import offline_t5_tokenizer, offline_tokenizer
from engine.image.pipeline import ImageModel, TrainOptions
from engine.image.settings import GenerationSettings
from engine.image.tiny import build_tiny_pipeline
from engine.image.types import TrainImage

CONFIGS = Path(__file__).parent / "configs"
RESULTS = Path(__file__).parent / "results"
# Steps per image, as each model is meant to be sampled.
GEN = {"sdxl": {"steps": 30, "guidance_scale": 7.0}, "flux": {"steps": 28, "guidance_scale": 3.5}}
CONFIG_DIR = {"sdxl": "sdxl", "flux": "flux-dev"}


def _config(arch: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONFIGS / CONFIG_DIR[arch] / f"{name}.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_") and k != "architectures"}


@contextlib.contextmanager
def _building(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Modules created inside are initialised on ``device`` in ``dtype`` (12B parameters
    would take minutes to initialise on a CPU, and twice the memory in float32)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(old)


def build_full(arch: str, device: torch.device, dtype: torch.dtype) -> Any:
    """The full-size pipeline from bench/configs with random weights."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
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

    # Byte-level offline tokenizers: ids fall inside the real vocabularies, and the
    # sequence lengths (77 CLIP, 512 T5 tokens) are the real ones.
    with _building(device, dtype), torch.no_grad():
        vae = AutoencoderKL(**_config(arch, "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**_config(arch, "text_encoder")))
        if arch == "sdxl":
            unet = UNet2DConditionModel(**_config(arch, "unet"))
            te2 = CLIPTextModelWithProjection(CLIPTextConfig(**_config(arch, "text_encoder_2")))
            return StableDiffusionXLPipeline(
                vae=vae,
                text_encoder=text_encoder,
                text_encoder_2=te2,
                tokenizer=offline_tokenizer(),
                tokenizer_2=offline_tokenizer(),
                unet=unet,
                scheduler=EulerDiscreteScheduler(**_config(arch, "scheduler")),
            )
        transformer = FluxTransformer2DModel(**_config(arch, "transformer"))
        t5 = T5EncoderModel(T5Config(**_config(arch, "text_encoder_2")))
        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**_config(arch, "scheduler")),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=offline_tokenizer(),
            text_encoder_2=t5,
            tokenizer_2=offline_t5_tokenizer(512),
            transformer=transformer,
        )


def full_size_parameters(arch: str) -> dict[str, float]:
    """Billions of parameters per component of the full-size configs (meta device: no
    memory), so a dry run checks that the configs build the published architectures."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        pipe = build_full(arch, torch.device("cpu"), torch.float32)
    parts = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2")
    return {
        p: round(sum(x.numel() for x in getattr(pipe, p).parameters()) / 1e9, 3)
        for p in parts
        if getattr(pipe, p, None) is not None
    }


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure_generation(model: ImageModel, arch: str, size: int, runs: int) -> dict[str, Any]:
    gen = GEN[arch]
    model.generate("tadz, a portrait photo", steps=2, width=size, height=size)  # warm-up
    _reset_peak(model.device)
    times = []
    for seed in range(runs):
        sync(model.device)
        started = time.perf_counter()
        model.generate("tadz, a portrait photo", seed=seed, width=size, height=size, **gen)
        sync(model.device)
        times.append(time.perf_counter() - started)
    return {
        "size": size,
        "steps": gen["steps"],
        "guidance_scale": gen["guidance_scale"],
        "seconds_per_image": round(statistics.median(times), 3),
        "runs": [round(t, 3) for t in times],
        "peak_vram_gib": _peak_gib(model.device),
    }


def measure_refine(model: ImageModel, arch: str, size: int, runs: int) -> dict[str, Any]:
    """Seconds per Upscale 2x (size -> 2 x size) and per Vary (subtle, strong) of a drawn
    image: img2img through the engine's ImageModel.refine at the engine's default strengths,
    with each model's steps (img2img runs ``steps x strength`` of them)."""
    gen = GEN[arch]
    cfg = GenerationSettings()
    prompt = "tadz, a portrait photo"
    drawn = model.generate(prompt, seed=0, width=size, height=size, **gen)
    source = Image.fromarray((np.clip(drawn, 0, 1) * 255).round().astype(np.uint8))
    # Warm-up at the upscale's size: the img2img pipeline is made, kernels are picked.
    model.refine(source, prompt, strength=0.5, steps=2, width=2 * size, height=2 * size)
    out: dict[str, Any] = {"source_size": size}
    cases = {
        "upscale_2x": (cfg.upscale_strength, 2 * size),
        "vary_subtle": (cfg.vary_subtle_strength, size),
        "vary_strong": (cfg.vary_strong_strength, size),
    }
    for name, (strength, side) in cases.items():
        _reset_peak(model.device)
        times = []
        for seed in range(runs):
            sync(model.device)
            started = time.perf_counter()
            model.refine(
                source, prompt, strength=strength, seed=seed + 1, width=side, height=side, **gen
            )
            sync(model.device)
            times.append(time.perf_counter() - started)
        out[name] = {
            "size": side,
            "strength": strength,
            "denoising_steps": int(max(gen["steps"], math.ceil(1 / strength)) * strength),
            "seconds_per_image": round(statistics.median(times), 3),
            "runs": [round(t, 3) for t in times],
            "peak_vram_gib": _peak_gib(model.device),
        }
    return out


def measure_training(
    model: ImageModel, size: int, steps: int, warmup: int, options: TrainOptions
) -> dict[str, Any]:
    images = [TrainImage(img, "tadz, a photo") for img in sample_images(4, size)]
    marks: list[float] = []

    def on_step(step: int, total: int, loss: float) -> None:
        sync(model.device)
        marks.append(time.perf_counter())

    _reset_peak(model.device)
    with tempfile.TemporaryDirectory() as tmp:
        model.train_lora(
            images,
            Path(tmp) / "lora.safetensors",
            rank=16,
            steps=warmup + steps,
            learning_rate=1e-4,
            resolution=size,
            on_step=on_step,
            options=options,
        )
    timed = marks[warmup - 1 :]  # from the end of the last warm-up step
    return {
        "size": size,
        "rank": 16,
        "batch_size": 1,
        "steps_per_second": round((len(timed) - 1) / (timed[-1] - timed[0]), 3),
        "peak_vram_gib": _peak_gib(model.device),
        "gradient_checkpointing": options.gradient_checkpointing,
        "optimizer": options.optimizer,
    }


def eight_bit_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import bitsandbytes  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def bench_arch(arch: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    started = time.perf_counter()
    if args.dry_run:
        out["full_size_parameters_billions"] = full_size_parameters(arch)
        pipe = build_tiny_pipeline(1234, args.size, arch)
        label = f"tiny-random {arch}"
    else:
        pipe = build_full(arch, device, torch.bfloat16)
        label = f"random-weight {arch} (bench/configs/{CONFIG_DIR[arch]})"
    model = ImageModel(pipe, label=label, device=device)
    sync(device)
    out["build_seconds"] = round(time.perf_counter() - started, 1)
    out["generation"] = measure_generation(model, arch, args.size, args.runs)
    out["refine"] = measure_refine(model, arch, args.size, args.runs)
    if args.skip_training:
        del model, pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return out
    bf16 = torch.bfloat16 if device.type == "cuda" else None
    eight = eight_bit_available(device)
    out["training"] = {
        "plain": measure_training(
            model, args.size, args.train_steps, args.warmup, TrainOptions(autocast_dtype=bf16)
        ),
        "memory_options": measure_training(
            model,
            args.size,
            args.train_steps,
            args.warmup,
            TrainOptions(
                autocast_dtype=bf16,
                gradient_checkpointing=True,
                optimizer="adamw8bit" if eight else "adamw",
            ),
        ),
    }
    if not eight:
        out["training"]["memory_options"]["note"] = (
            "8-bit AdamW not measured: bitsandbytes is not importable here (or no CUDA)"
        )
    del model, pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU")
    parser.add_argument("--arch", choices=("sdxl", "flux"), action="append")
    parser.add_argument("--size", type=int, default=None, help="default 1024 (dry run: 32)")
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--skip-training", action="store_true", help="generation, upscale and vary only"
    )
    args = parser.parse_args()
    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # the tiny models gain nothing from threads
        args.size = args.size or 32
        args.train_steps = args.train_steps or 10
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device; --dry-run runs the tiny models on the CPU")
        device = torch.device("cuda")
        args.size = args.size or 1024
        args.train_steps = args.train_steps or 10
    results: dict[str, Any] = {
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dry_run": args.dry_run,
        "note": "random weights built from bench/configs (published architectures); "
        "bf16 on CUDA; training: bucketed, cached latents and text embeddings, batch 1",
    }
    for arch in args.arch or ["sdxl", "flux"]:
        print(f"{arch}: building and measuring ...", flush=True)
        results[arch] = bench_arch(arch, args, device)
        print(json.dumps(results[arch], indent=2), flush=True)
    out = args.out or RESULTS / ("lora_gpu-dryrun.json" if args.dry_run else "lora_gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
