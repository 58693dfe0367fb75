"""Aspect-ratio bucketing in LoRA training, and latents/text encoded once per training."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.image.pipeline import ImageModel, _cover_crop
from engine.image.settings import ImageSettings
from engine.image.types import TrainImage, nearest_bucket, training_buckets
from tests.engine.image.zips import image_bytes

pytestmark = pytest.mark.no_database


def shaped(i: int, width: int, height: int, caption: str = "tadz") -> TrainImage:
    img = Image.open(io.BytesIO(image_bytes(i, max(width, height)))).convert("RGB")
    return TrainImage(img.resize((width, height)), caption)


# A landscape, a portrait and a square pair, as a member's phone photos come.
MIXED = [
    shaped(0, 64, 36),
    shaped(1, 60, 34),
    shaped(2, 36, 64),
    shaped(3, 34, 60),
    shaped(4, 48, 48),
    shaped(5, 40, 40),
]


@pytest.mark.parametrize(("side", "multiple"), [(512, 64), (1024, 64), (768, 64), (32, 8)])
def test_buckets_hold_the_native_area_in_model_multiples(side: int, multiple: int) -> None:
    buckets = training_buckets(side, multiple)
    assert (side, side) in buckets
    for w, h in buckets:
        assert w % multiple == 0 and h % multiple == 0
        assert w * h <= side * side and max(w / h, h / w) <= 2.0
        assert (h, w) in buckets
    if side >= 512:
        # No bucket wastes much of the pixel budget, and there is a choice of shapes.
        assert all(w * h >= 0.85 * side * side for w, h in buckets)
        assert len(buckets) >= 5
    if side == 1024:  # SDXL's usual buckets
        assert {(1344, 768), (1216, 832), (1152, 896)} <= set(buckets)


def test_the_tiny_models_buckets_and_the_nearest_shape() -> None:
    assert training_buckets(32, 8) == [(24, 40), (32, 32), (40, 24)]
    assert nearest_bucket(1920, 1080, training_buckets(1024, 64)) == (1344, 768)
    assert nearest_bucket(1080, 1920, training_buckets(1024, 64)) == (768, 1344)
    assert nearest_bucket(1000, 1010, training_buckets(1024, 64)) == (1024, 1024)


def test_a_cover_crop_keeps_nearly_the_whole_image() -> None:
    img = Image.new("RGB", (34, 60))
    fitted, top, left = _cover_crop(img, 24, 40)
    assert fitted.size == (24, 40)
    assert left == 0 and top <= 1  # 34x60 scaled to 24x42: one row off each end


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_images_train_in_their_own_shape(arch: str) -> None:
    model = ImageModel.from_settings(ImageSettings(tiny_arch=arch))
    buckets = model._buckets(MIXED, 32, seed=0, bucketing=True)
    assert [(b.size, len(b.latents)) for b in buckets] == [
        ((24, 40), 2),
        ((32, 32), 2),
        ((40, 24), 2),
    ]
    scale = int(model.pipe.vae_scale_factor)
    for b in buckets:
        w, h = b.size
        assert tuple(b.latents.shape) == (2, 4, h // scale, w // scale)
    if arch == "sdxl":
        # SDXL's size conditioning: original size, crop, target size (height first).
        portrait = buckets[0].cond.time_ids
        assert portrait is not None
        assert portrait[0].tolist() == [64, 36, 1, 0, 40, 24]
    square = model._buckets(MIXED, 32, seed=0, bucketing=False)
    assert [(b.size, len(b.latents)) for b in square] == [((32, 32), 6)]


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_bucketed_training_learns_mixed_shapes(arch: str, tmp_path: Path) -> None:
    model = ImageModel.from_settings(ImageSettings(tiny_arch=arch))
    before = model.denoising_loss(MIXED)
    dest = tmp_path / "mixed.safetensors"
    fit = model.train_lora(MIXED, dest, rank=4, steps=40, learning_rate=1e-2, batch_size=2)
    after = model.denoising_loss(MIXED, lora=dest)
    assert after < before * 0.97, (before, after)
    assert len(fit.losses) == 40 and all(math.isfinite(x) for x in fit.losses)
    generated = model.generate("tadz", lora=dest, steps=2, width=40, height=24)
    assert generated.shape == (24, 40, 3)


def test_latents_and_text_are_encoded_once_whatever_the_steps(tmp_path: Path) -> None:
    model = ImageModel.from_settings(ImageSettings())
    calls = {"vae": 0, "text": 0}

    def count(name: str):  # type: ignore[no-untyped-def]
        def hook(*_: object) -> None:
            calls[name] += 1

        return hook

    hooks = [
        model.pipe.vae.encoder.register_forward_hook(count("vae")),
        model.pipe.text_encoder.register_forward_hook(count("text")),
    ]
    try:
        seen = []
        for steps in (2, 12):
            calls.update(vae=0, text=0)
            model.train_lora(
                MIXED, tmp_path / f"{steps}.safetensors", rank=2, steps=steps, learning_rate=1e-2
            )
            seen.append(dict(calls))
    finally:
        for h in hooks:
            h.remove()
    # One VAE pass per bucket (each under 4 images) and one text pass per bucket.
    assert seen[0] == seen[1] == {"vae": 3, "text": 3}


def test_bucketing_can_be_turned_off(tmp_path: Path) -> None:
    from safetensors import safe_open

    model = ImageModel.from_settings(ImageSettings())
    dest = tmp_path / "square.safetensors"
    model.train_lora(MIXED, dest, rank=2, steps=2, learning_rate=1e-2, bucketing=False)
    with safe_open(str(dest), "pt") as fh:
        assert fh.metadata()["buckets"] == "32x32"
    model.train_lora(MIXED, dest, rank=2, steps=2, learning_rate=1e-2)
    with safe_open(str(dest), "pt") as fh:
        assert fh.metadata()["buckets"] == "24x40 32x32 40x24"
    assert torch.is_grad_enabled()
