"""Benchmark: LoRA training steps/s and generation seconds per image, through engine code.

Default: the built-in tiny random model on this machine's CPU (the same ImageModel the
worker runs). ``--base-model DIR`` runs a local SD 1.5 / SDXL diffusers checkpoint
instead (GPU when present). ``--sdxl-unet`` builds an SDXL-architecture UNet from config
with random weights (no download) and times the part that dominates real SDXL work: a
30-step denoising loop at 1024x1024 with classifier-free guidance, and LoRA training
steps on it. Prints the numbers and writes them to bench/results/lora[-<mode>].json,
naming the device.

    python bench/lora.py [--train-steps 30] [--gen-steps 30] [--runs 3]
    python bench/lora.py --base-model /models/sdxl-base --device cuda
    python bench/lora.py --sdxl-unet --device cuda [--compile]
    python bench/lora.py --buckets [--arch sdxl|flux]   # square vs buckets vs no cache

``--buckets`` trains the same mixed-shape set three ways in one process, interleaved run
by run: center-cropped squares (the loop before bucketing), aspect-ratio buckets, and
buckets with the VAE and text encoders run again on every step's batch (what training
costs without cached latents and text embeddings).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.image.pipeline import LORA_TARGETS, ImageModel, resolve_device, resolve_dtype
from engine.image.settings import ImageSettings
from engine.image.types import TrainImage

RESULTS = Path(__file__).parent / "results"

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, the architecture only.
SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
}


def device_name(device: torch.device) -> str:
    """The card's name on CUDA; the CPU's core count otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} torch thread(s))"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample_images(n: int, size: int) -> list[Image.Image]:
    images = []
    for i in range(n):
        img = Image.new("RGB", (size, size), (180, 40 + 20 * i, 60))
        ImageDraw.Draw(img).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4))
        images.append(img)
    return images


def bench_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """Training and generation through ImageModel, as the worker runs them."""
    settings = ImageSettings(
        base_model=args.base_model, device=args.device, dtype=args.dtype, tiny_arch=args.arch
    )
    started = time.perf_counter()
    model = ImageModel.from_settings(settings)
    load_s = time.perf_counter() - started
    size = args.resolution or model.native_size
    examples = [TrainImage(img, "tadz, a disc") for img in sample_images(4, size)]
    stamps: list[float] = []

    def on_step(step: int, steps: int, loss: float) -> None:
        sync(model.device)
        stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        lora = Path(tmp) / "bench.safetensors"
        model.train_lora(
            examples,
            lora,
            rank=args.rank,
            steps=args.train_steps,
            learning_rate=1e-4,
            resolution=size,
            on_step=on_step,
        )
        # The first step pays for allocation and kernel selection: leave it out.
        timed = stamps[1:] if len(stamps) > 2 else stamps
        train_steps_per_s = (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else 0.0
        gen = {"steps": args.gen_steps, "width": size, "height": size}
        model.generate("tadz, warm-up", lora=lora, **{**gen, "steps": 2})
        base_times, lora_times = [], []
        for run in range(args.runs):
            for times, path in ((base_times, None), (lora_times, lora)):
                sync(model.device)
                t0 = time.perf_counter()
                model.generate("tadz, a disc on a table", lora=path, seed=run, **gen)
                sync(model.device)
                times.append(time.perf_counter() - t0)
    return {
        "mode": "pipeline",
        "model": model.label,
        "device": device_name(model.device),
        "dtype": str(model.dtype),
        "resolution": size,
        "load_s": round(load_s, 3),
        "train_steps": args.train_steps,
        "lora_rank": args.rank,
        "train_steps_per_s": round(train_steps_per_s, 3),
        "gen_steps": args.gen_steps,
        "s_per_image": round(statistics.median(base_times), 4),
        "s_per_image_with_lora": round(statistics.median(lora_times), 4),
        "gen_steps_per_s_with_lora": round(args.gen_steps / statistics.median(lora_times), 2),
    }


def mixed_images(n: int, size: int) -> list[Image.Image]:
    """Photos as members send them: landscape, portrait and square, larger than the model."""
    shapes = ((3, 2), (2, 3), (1, 1), (16, 9), (9, 16), (4, 3))
    images = []
    for i, img in enumerate(sample_images(n, 2 * size)):
        a, b = shapes[i % len(shapes)]
        scale = 2 * size / max(a, b)
        images.append(img.resize((round(a * scale), round(b * scale))))
    return images


def bench_buckets(args: argparse.Namespace) -> dict[str, Any]:
    """Steps/s of square crops, buckets, and buckets without the latent/text cache."""
    settings = ImageSettings(device=args.device, dtype=args.dtype, tiny_arch=args.arch)
    model = ImageModel.from_settings(settings)
    size = args.resolution or model.native_size
    examples = [TrainImage(img, "tadz, a disc") for img in mixed_images(12, size)]
    batch_size = 2
    ways = ("square", "buckets", "buckets_no_cache")
    rates: dict[str, list[float]] = {w: [] for w in ways}
    walls: dict[str, list[float]] = {w: [] for w in ways}
    buckets_used = ""

    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for way in ways:
                stamps: list[float] = []

                def on_step(
                    step: int, steps: int, loss: float, way: str = way, stamps: list[float] = stamps
                ) -> None:
                    if way == "buckets_no_cache":
                        # An uncached trainer decodes nothing more, but encodes the step's
                        # batch (VAE + text encoders) before its forward pass.
                        batch = [
                            examples[(step * batch_size + j) % len(examples)]
                            for j in range(batch_size)
                        ]
                        model._buckets(batch, size, step, True)
                    sync(model.device)
                    stamps.append(time.perf_counter())

                t0 = time.perf_counter()
                fit = model.train_lora(
                    examples,
                    Path(tmp) / f"{way}.safetensors",
                    rank=args.rank,
                    steps=args.train_steps,
                    learning_rate=1e-4,
                    resolution=size,
                    batch_size=batch_size,
                    seed=run,
                    bucketing=way != "square",
                    on_step=on_step,
                )
                walls[way].append(time.perf_counter() - t0)
                timed = stamps[1:]
                rates[way].append((len(timed) - 1) / (timed[-1] - timed[0]))
                if way == "buckets":
                    from safetensors import safe_open

                    with safe_open(str(fit.path), "pt") as fh:
                        buckets_used = fh.metadata()["buckets"]
    med = {w: statistics.median(rates[w]) for w in ways}
    return {
        "mode": "buckets",
        "model": model.label,
        "device": device_name(model.device),
        "resolution": size,
        "images": len(examples),
        "image_shapes": "3:2, 2:3, 1:1, 16:9, 9:16, 4:3 at twice the resolution",
        "buckets": buckets_used,
        "batch_size": batch_size,
        "lora_rank": args.rank,
        "train_steps": args.train_steps,
        "runs": args.runs,
        "train_steps_per_s_square": round(med["square"], 2),
        "train_steps_per_s_buckets": round(med["buckets"], 2),
        "train_steps_per_s_buckets_no_cache": round(med["buckets_no_cache"], 2),
        "buckets_vs_square": round(med["buckets"] / med["square"], 3),
        "cache_speedup": round(med["buckets"] / med["buckets_no_cache"], 3),
        "train_wall_s_square": round(statistics.median(walls["square"]), 3),
        "train_wall_s_buckets": round(statistics.median(walls["buckets"]), 3),
        "all_runs_steps_per_s": {w: [round(r, 2) for r in rates[w]] for w in ways},
    }


def bench_sdxl_unet(args: argparse.Namespace) -> dict[str, Any]:
    """An SDXL UNet from config (random weights): 30-step CFG denoising and LoRA training."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from peft import LoraConfig

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    size = args.resolution or 1024
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SDXL_UNET_CONFIG).to(device, dtype).eval()
    unet.requires_grad_(False)
    if device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in unet.parameters())
    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    lat = size // 8
    text = torch.randn(2, 77, 2048, device=device, dtype=dtype)
    cond = {
        "text_embeds": torch.randn(2, 1280, device=device, dtype=dtype),
        "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype),
    }
    forward = torch.compile(unet, mode="max-autotune-no-cudagraphs") if args.compile else unet

    @torch.inference_mode()
    def denoise(steps: int) -> float:
        sched.set_timesteps(steps, device=device)
        x = torch.randn(1, 4, lat, lat, device=device, dtype=dtype) * sched.init_noise_sigma
        sync(device)
        t0 = time.perf_counter()
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([x, x]), t)
            noise = forward(inp, t, text, added_cond_kwargs=cond, return_dict=False)[0]
            uncond, cond_pred = noise.chunk(2)
            x = sched.step(uncond + 7.0 * (cond_pred - uncond), t, x, return_dict=False)[0]
        sync(device)
        return time.perf_counter() - t0

    denoise(min(3, args.gen_steps))  # warm-up (and compilation)
    gen_times = [denoise(args.gen_steps) for _ in range(args.runs)]

    unet.add_adapter(
        LoraConfig(
            r=args.rank,
            lora_alpha=args.rank,
            init_lora_weights="gaussian",
            target_modules=list(LORA_TARGETS),
        )
    )
    lora_params = [p for n, p in unet.named_parameters() if "lora" in n]
    for p in lora_params:
        p.data = p.data.float()
        p.requires_grad_(True)
    opt = torch.optim.AdamW(lora_params, lr=1e-4)
    unet.train()
    autocast = device.type == "cuda" and dtype != torch.float32
    stamps = []
    for _ in range(args.train_steps):
        x = torch.randn(1, 4, lat, lat, device=device, dtype=dtype)
        t = torch.randint(0, 1000, (1,), device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            pred = unet(
                x,
                t,
                text[:1],
                added_cond_kwargs={k: v[:1] for k, v in cond.items()},
                return_dict=False,
            )[0]
        loss = torch.nn.functional.mse_loss(pred.float(), x.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        stamps.append(time.perf_counter())
    timed = stamps[1:] if len(stamps) > 2 else stamps
    train_rate = (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else 0.0
    return {
        "mode": "sdxl-unet-random",
        "model": "SDXL UNet architecture, random weights (UNet only: no VAE/text encoders)",
        "device": device_name(device),
        "dtype": str(dtype),
        "compiled": bool(args.compile),
        "unet_params": params,
        "resolution": size,
        "gen_steps": args.gen_steps,
        "cfg_batch": 2,
        "s_per_denoise_loop": round(statistics.median(gen_times), 4),
        "target_s": 2.0,
        "lora_rank": args.rank,
        "train_steps": args.train_steps,
        "train_steps_per_s": round(train_rate, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-model", type=Path, default=None)
    parser.add_argument("--sdxl-unet", action="store_true")
    parser.add_argument("--buckets", action="store_true", help="square vs buckets vs no cache")
    parser.add_argument(
        "--arch", choices=("sd15", "sdxl", "flux"), default="sd15", help="tiny layout"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--gen-steps", type=int, default=30)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile (sdxl-unet)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.buckets:
        result = bench_buckets(args)
    else:
        result = bench_sdxl_unet(args) if args.sdxl_unet else bench_pipeline(args)
    result |= {
        "torch": torch.__version__,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    name = (
        "lora-sdxl-unet"
        if args.sdxl_unet
        else ("lora" if not args.base_model else "lora-checkpoint")
    )
    if not args.sdxl_unet and args.arch != "sd15" and not args.base_model:
        name = f"lora-tiny-{args.arch}"
    if args.buckets:
        name = "lora-buckets" if args.arch == "sd15" else f"lora-buckets-{args.arch}"
    out = args.out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:>28}: {value}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
