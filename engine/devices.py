"""Which device and dtype each back end uses, said once when a worker starts.

An operator with a GPU and the CPU build of torch (the default set-up) would otherwise run
every image on the CPU without a word. :func:`log_device_report` logs one line per back end
(voice, image) and a warning when a GPU is present but unused, with the fix.

:func:`probe` reads the machine (torch is imported here, so call it in a worker, not on an
API request); :func:`device_report` is pure, so tests give it any machine.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.image.settings import ImageSettings

log = logging.getLogger(__name__)

# Where an NVIDIA driver shows itself, with or without a CUDA build of torch.
NVIDIA_MARKERS = (Path("/proc/driver/nvidia/version"), Path("/dev/nvidia0"))
GPU_FIX = "install the CUDA build with `make gpu` (docs/deployment/server.md)"


@dataclass(frozen=True)
class GpuProbe:
    """What this machine offers torch."""

    # torch's version, e.g. "2.13.0+cpu"; None when torch is not installed.
    torch_version: str | None = None
    # The CUDA version torch was built for; None for a CPU-only build.
    cuda_build: str | None = None
    # Whether torch can use a CUDA GPU now.
    cuda_available: bool = False
    device_name: str | None = None
    bf16_supported: bool = False
    # An NVIDIA driver is loaded: a GPU is present, whatever torch can do with it.
    nvidia_driver: bool = False


def probe() -> GpuProbe:
    """This machine's GPU and torch build (imports torch)."""
    nvidia = any(marker.exists() for marker in NVIDIA_MARKERS) or bool(shutil.which("nvidia-smi"))
    try:
        import torch
    except ImportError:
        return GpuProbe(nvidia_driver=nvidia)
    available = bool(torch.cuda.is_available())
    return GpuProbe(
        torch_version=str(torch.__version__),
        cuda_build=torch.version.cuda,
        cuda_available=available,
        device_name=torch.cuda.get_device_name(0) if available else None,
        bf16_supported=bool(available and torch.cuda.is_bf16_supported()),
        nvidia_driver=nvidia or available,
    )


@dataclass(frozen=True)
class Placement:
    """Where one back end runs."""

    device: str
    dtype: str


def image_placement(settings: ImageSettings, gpu: GpuProbe) -> Placement:
    """Where the image model runs: the same choice as ``engine.image.pipeline`` makes."""
    if settings.device == "auto":
        device = "cuda" if gpu.cuda_available else "cpu"
    else:
        device = settings.device
    if settings.is_tiny:
        return Placement(device, "float32")  # the tiny model is always built in float32
    if settings.dtype != "auto":
        return Placement(device, settings.dtype)
    if not device.startswith("cuda"):
        return Placement(device, "float32")
    return Placement(device, "bfloat16" if gpu.bf16_supported else "float16")


def device_report(image: ImageSettings, gpu: GpuProbe, *, voice_line: str) -> list[tuple[int, str]]:
    """The start-up lines (log level, message): one per back end, then any warnings."""
    placed = image_placement(image, gpu)
    where = placed.device
    if placed.device.startswith("cuda") and gpu.device_name:
        where = f"{placed.device} ({gpu.device_name})"
    model = (
        "the tiny random test model (draws noise: engine.image.base_model is not set)"
        if image.is_tiny
        else str(image.base_model)
    )
    lines: list[tuple[int, str]] = [
        (logging.INFO, f"voice: {voice_line}"),
        (logging.INFO, f"image: {model} on {where}, {placed.dtype}"),
    ]
    torch_name = f"torch {gpu.torch_version}" if gpu.torch_version else "torch"
    on_cpu = not placed.device.startswith("cuda")
    if gpu.nvidia_driver and gpu.torch_version and gpu.cuda_build is None:
        lines.append(
            (
                logging.WARNING,
                f"an NVIDIA GPU is present but {torch_name} is a CPU-only build: images are "
                f"made on the CPU; {GPU_FIX}",
            )
        )
    elif gpu.nvidia_driver and gpu.cuda_build and not gpu.cuda_available:
        lines.append(
            (
                logging.WARNING,
                f"an NVIDIA GPU is present but {torch_name} (CUDA {gpu.cuda_build}) cannot use "
                "it (a driver older than that CUDA?); images are made on the CPU. Check "
                "`nvidia-smi`",
            )
        )
    elif gpu.cuda_available and on_cpu:
        lines.append(
            (
                logging.WARNING,
                f"a CUDA GPU ({gpu.device_name}) is present but engine.image.device = "
                f'"{image.device}": images are made on the CPU; set it to "auto"',
            )
        )
    elif not on_cpu and not gpu.cuda_available:
        lines.append(
            (
                logging.WARNING,
                f'engine.image.device = "{image.device}" but {torch_name} sees no CUDA GPU: '
                'image jobs will fail; set it to "auto" or "cpu"',
            )
        )
    if image.is_tiny and not on_cpu:
        lines.append(
            (
                logging.INFO,
                "image: no engine.image.base_model is set, so the GPU draws noise with the "
                "tiny model; point it at a local SD 1.5 / SDXL checkpoint",
            )
        )
    return lines


def log_device_report(
    image: ImageSettings, *, voice_line: str, gpu: GpuProbe | None = None
) -> list[tuple[int, str]]:
    """Log :func:`device_report` for this machine; returns the lines logged."""
    lines = device_report(image, probe() if gpu is None else gpu, voice_line=voice_line)
    for level, message in lines:
        log.log(level, message)
    return lines
