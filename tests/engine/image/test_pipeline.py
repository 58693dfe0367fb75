"""The image model on the tiny random base: LoRA training, saving, reloading, adapters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from engine.image.pipeline import ImageModel, lora_fingerprint, to_image_bytes
from engine.image.settings import TINY_MODEL_LABEL, ImageSettings
from engine.image.types import ModelError, TrainImage
from tests.engine.image.zips import image_bytes

pytestmark = pytest.mark.no_database

PROMPT = "tadz, a blue disc"
GEN = {"steps": 4, "seed": 11, "negative_prompt": "blurry"}


def examples() -> list[TrainImage]:
    import io

    return [
        TrainImage(Image.open(io.BytesIO(image_bytes(i, 48))).convert("RGB"), PROMPT)
        for i in range(4)
    ]


@pytest.fixture(scope="module")
def model() -> ImageModel:
    return ImageModel.from_settings(ImageSettings())


@pytest.fixture(scope="module")
def trained(model: ImageModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    dest = tmp_path_factory.mktemp("lora") / "tadz.safetensors"
    model.train_lora(
        examples(),
        dest,
        rank=4,
        steps=40,
        learning_rate=1e-2,
        batch_size=4,
        seed=0,
        metadata={"trigger_word": "tadz"},
    )
    yield dest


def test_the_tiny_model_says_it_draws_noise(model: ImageModel) -> None:
    assert model.label == TINY_MODEL_LABEL and "noise" in model.label
    assert model.native_size == 32


def test_training_lowers_the_loss_on_its_images(model: ImageModel, trained: Path) -> None:
    before = model.denoising_loss(examples())
    after = model.denoising_loss(examples(), lora=trained)
    assert after < before * 0.97, (before, after)


def test_the_saved_lora_is_safetensors_with_unet_attention_weights(trained: Path) -> None:
    with safe_open(str(trained), "pt") as fh:
        keys = list(fh.keys())
        meta = fh.metadata()
    # kohya's key style (see test_lora_files.py): lora_unet_<module>.lora_down.weight, ...
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert {k.split(".")[0].rsplit("_", 1)[-1] for k in keys} == {"q", "k", "v", "0"}
    assert meta["rank"] == "4" and meta["trigger_word"] == "tadz"
    assert meta["base_model"] == TINY_MODEL_LABEL


def test_lora_changes_the_output_and_weight_zero_is_the_base(
    model: ImageModel, trained: Path
) -> None:
    base = model.generate(PROMPT, **GEN)
    with_lora = model.generate(PROMPT, lora=trained, **GEN)
    zero = model.generate(PROMPT, lora=trained, weight=0.0, **GEN)
    assert base.shape == (32, 32, 3) and base.dtype == np.float32
    assert np.abs(with_lora - base).max() > 1e-3
    np.testing.assert_allclose(zero, base, atol=1e-5)
    # Back to no LoRA after one was active: the base again, bit for bit.
    np.testing.assert_array_equal(model.generate(PROMPT, **GEN), base)


def test_a_reloaded_lora_reproduces_the_same_image(model: ImageModel, trained: Path) -> None:
    first = model.generate(PROMPT, lora=trained, **GEN)
    fresh = ImageModel.from_settings(ImageSettings())  # another worker: same seeded base
    again = fresh.generate(PROMPT, lora=trained, **GEN)
    np.testing.assert_allclose(again, first, atol=1e-5)
    assert lora_fingerprint(trained) in fresh.loaded_adapters()


def test_adapters_are_swapped_without_reloading_the_base(
    model: ImageModel, trained: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.safetensors"
    model.train_lora(examples()[:2], other, rank=2, steps=3, learning_rate=1e-2, seed=1)
    unet = model.pipe.unet
    a = model.generate(PROMPT, lora=trained, **GEN)
    b = model.generate(PROMPT, lora=other, **GEN)
    assert model.pipe.unet is unet
    assert np.abs(a - b).max() > 1e-4
    np.testing.assert_allclose(model.generate(PROMPT, lora=trained, **GEN), a, atol=1e-6)
    model.max_adapters = 1
    model.generate(PROMPT, lora=other, **GEN)
    assert model.loaded_adapters() == [lora_fingerprint(other)]
    model.max_adapters = 8


def test_an_interrupted_training_leaves_the_base_clean(model: ImageModel, tmp_path: Path) -> None:
    base = model.generate(PROMPT, **GEN)

    def stop(step: int, steps: int, loss: float) -> None:
        if step == 2:
            raise RuntimeError("canceled")

    with pytest.raises(RuntimeError):
        model.train_lora(
            examples(),
            tmp_path / "x.safetensors",
            rank=4,
            steps=10,
            learning_rate=1e-2,
            on_step=stop,
        )
    assert not (tmp_path / "x.safetensors").exists()
    np.testing.assert_array_equal(model.generate(PROMPT, **GEN), base)
    assert not any(p.requires_grad for p in model.pipe.unet.parameters())


def test_a_lora_that_does_not_fit_is_a_model_error(model: ImageModel, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight"
    save_file({key: torch.zeros(4, 999)}, str(bad))
    with pytest.raises(ModelError, match="does not fit"):
        model.generate(PROMPT, lora=bad, **GEN)


@pytest.mark.parametrize(("fmt", "magic"), [("png", b"\x89PNG"), ("webp", b"RIFF")])
def test_images_encode_as_png_or_webp(fmt: str, magic: bytes) -> None:
    data = to_image_bytes(np.full((8, 8, 3), 0.5, dtype=np.float32), fmt)
    assert data.startswith(magic)


def test_the_sdxl_layout_trains_and_swaps_adapters_too(tmp_path: Path) -> None:
    settings = ImageSettings(tiny_arch="sdxl")
    xl = ImageModel.from_settings(settings)
    assert xl.is_xl and "noise" in xl.label and "sdxl" in xl.label
    dest = tmp_path / "xl.safetensors"
    before = xl.denoising_loss(examples())
    xl.train_lora(examples(), dest, rank=4, steps=40, learning_rate=1e-2, batch_size=4)
    assert xl.denoising_loss(examples(), lora=dest) < before * 0.97
    base = xl.generate(PROMPT, **GEN)
    with_lora = xl.generate(PROMPT, lora=dest, **GEN)
    assert np.abs(with_lora - base).max() > 1e-3
    np.testing.assert_allclose(xl.generate(PROMPT, lora=dest, weight=0.0, **GEN), base, atol=1e-5)
    again = ImageModel.from_settings(settings).generate(PROMPT, lora=dest, **GEN)
    np.testing.assert_allclose(again, with_lora, atol=1e-5)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_a_local_checkpoint_directory_loads_offline_and_draws_the_same(
    arch: str, tmp_path: Path
) -> None:
    from engine.image.tiny import build_tiny_pipeline

    build_tiny_pipeline(1234, 32, arch).save_pretrained(str(tmp_path / "ckpt"))
    loaded = ImageModel.from_settings(ImageSettings(base_model=tmp_path / "ckpt"))
    assert loaded.label == str(tmp_path / "ckpt") and loaded.is_xl is (arch == "sdxl")
    tiny = ImageModel.from_settings(ImageSettings(tiny_arch=arch))
    np.testing.assert_allclose(
        loaded.generate(PROMPT, **GEN), tiny.generate(PROMPT, **GEN), atol=1e-5
    )


def test_an_unsupported_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    with pytest.raises(ModelError, match="unsupported pipeline 'WanPipeline'"):
        ImageModel.from_settings(ImageSettings(base_model=tmp_path))
