"""Plain data of the image back end, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
