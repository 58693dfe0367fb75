"""Plain data of the image back end, importable without torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from PIL import Image


class ModelError(Exception):
    """The model or a LoRA file cannot be used; the message is safe to show."""


@dataclass(frozen=True)
class TrainImage:
    """One training example: an RGB image and its full caption (trigger word included)."""

    image: Image.Image
    caption: str


@dataclass(frozen=True)
class LoraFit:
    """What a training run produced."""

    path: Path
    losses: tuple[float, ...]
    rank: int
    steps: int
    resolution: int


# The aspect ratios a generation may ask for (width:height), squarest first.
AspectRatio = Literal["1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16"]
ASPECT_RATIOS: tuple[str, ...] = get_args(AspectRatio)


def aspect_size(ratio: str, side: int, multiple: int) -> tuple[int, int]:
    """Width and height of ``ratio`` holding about ``side``² pixels, each a ``multiple``.

    ``side`` is the base model's native size (512 for SD 1.5, 1024 for SDXL): keeping its
    area keeps the image in the range the model was trained on, as SDXL's own buckets do
    (16:9 at 1024 is 1344x768). ``multiple`` is what the VAE and UNet downsampling need.
    """
    a, _, b = ratio.partition(":")
    r = int(a) / int(b)

    def snap(x: float) -> int:
        return max(multiple, round(x / multiple) * multiple)

    return snap(side * math.sqrt(r)), snap(side / math.sqrt(r))


def training_buckets(side: int, multiple: int, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """Aspect-ratio buckets (width, height) of at most ``side``² pixels, kohya-style.

    Every width from ``side / max_ratio`` up in steps of ``multiple``, each with the
    largest height that keeps the area; shapes longer than ``max_ratio`` are left out.
    """
    buckets: set[tuple[int, int]] = set()
    w = max(multiple, (int(side / max_ratio) // multiple) * multiple)
    while w <= side * max_ratio:
        h = (side * side // w) // multiple * multiple
        if h >= multiple and max(w / h, h / w) <= max_ratio:
            buckets.update({(w, h), (h, w)})
        w += multiple
    buckets.add((side, side))
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose shape is closest to ``width`` x ``height`` (log aspect ratio)."""
    target = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - target), -b[0] * b[1]))
