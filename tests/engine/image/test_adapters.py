"""The shared pipeline's adapter and autograd state across interleaved trainings and generations.

One worker keeps one pipeline: every member's trainings and generations go through it. After
any order of them (and after any of them failing) the pipeline must hold exactly the LoRAs it
says it holds, no parameter may require grad or be an inference tensor, and each result must
equal what a fresh pipeline gives for the same request.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from engine.image.pipeline import ImageModel
from engine.image.settings import ImageSettings
from engine.image.types import ModelError, TrainImage
from tests.engine.image.zips import image_bytes
from tests.waiting import CEILING_S

pytestmark = pytest.mark.no_database

GEN = {"steps": 2, "seed": 5}
TRAIN = {"rank": 4, "steps": 3, "learning_rate": 1e-2, "batch_size": 2}


def examples(offset: int, caption: str) -> list[TrainImage]:
    return [
        TrainImage(Image.open(io.BytesIO(image_bytes(offset + i, 40))).convert("RGB"), caption)
        for i in range(2)
    ]


A = examples(0, "tadz, a disc")
B = examples(5, "pudgy, a penguin")


def fresh() -> ImageModel:
    return ImageModel.from_settings(ImageSettings())


def components(model: ImageModel) -> list[torch.nn.Module]:
    pipe = model.pipe
    found = [pipe.unet, pipe.text_encoder, pipe.vae]
    return found + ([pipe.text_encoder_2] if model.is_xl else [])


def assert_clean(model: ImageModel) -> None:
    """What must hold between jobs, whatever ran before."""
    trainable = [n for c in components(model) for n, p in c.named_parameters() if p.requires_grad]
    inference = [n for c in components(model) for n, p in c.named_parameters() if p.is_inference()]
    held = {a for names in model.pipe.get_list_adapters().values() for a in names}
    assert trainable == [], trainable[:3]
    assert inference == [], inference[:3]
    assert held == set(model.loaded_adapters()), (held, model.loaded_adapters())


def same_file(a: Path, b: Path) -> None:
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    for k in left:
        torch.testing.assert_close(left[k], right[k], rtol=0, atol=1e-6)


@dataclass(frozen=True)
class Reference:
    """LoRAs A and B and the images they draw, each made on a pipeline that did nothing else."""

    a: Path
    b: Path
    a_image: np.ndarray
    b_image: np.ndarray
    base_image: np.ndarray


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    root = tmp_path_factory.mktemp("ref")
    paths = {}
    images = {}
    for name, ex in (("a", A), ("b", B)):
        path = root / f"{name}.safetensors"
        fresh().train_lora(ex, path, seed=1, **TRAIN)
        paths[name] = path
        images[name] = fresh().generate("tadz, on a beach", lora=path, **GEN)
    base = fresh().generate("tadz, on a beach", **GEN)
    return Reference(paths["a"], paths["b"], images["a"], images["b"], base)


def check_image(model: ImageModel, lora: Path | None, expected: np.ndarray) -> None:
    got = model.generate("tadz, on a beach", lora=lora, **GEN)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert_clean(model)


def test_train_generate_train_again_is_the_reported_sequence(
    reference: Reference, tmp_path: Path
) -> None:
    """Issue 12 item 3: a generation used to break every later training."""
    model = fresh()
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    model.train_lora(A, a, seed=1, **TRAIN)
    assert_clean(model)
    check_image(model, a, reference.a_image)
    model.train_lora(B, b, seed=1, **TRAIN)
    assert_clean(model)
    # B learned exactly what it learns on a pipeline that never saw A.
    same_file(b, reference.b)
    check_image(model, a, reference.a_image)
    check_image(model, b, reference.b_image)
    check_image(model, None, reference.base_image)
    model.train_lora(A, a, seed=1, **TRAIN)  # A again, over its own file, while A is loaded
    assert_clean(model)
    same_file(a, reference.a)
    check_image(model, a, reference.a_image)
    check_image(model, b, reference.b_image)


def test_many_trainings_in_a_row_after_generations(reference: Reference, tmp_path: Path) -> None:
    model = fresh()
    for i in range(3):
        check_image(model, reference.a, reference.a_image)
        dest = tmp_path / f"b{i}.safetensors"
        model.train_lora(B, dest, seed=1, **TRAIN)
        same_file(dest, reference.b)
        assert_clean(model)


def test_a_generation_requested_during_a_training_waits_and_both_are_right(
    reference: Reference, tmp_path: Path
) -> None:
    model = fresh()
    check_image(model, reference.a, reference.a_image)
    images: list[np.ndarray] = []
    errors: list[BaseException] = []

    def draw() -> None:
        try:
            images.append(model.generate("tadz, on a beach", lora=reference.a, **GEN))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=draw)

    def on_step(step: int, steps: int, loss: float) -> None:
        if step == 1:
            thread.start()
            thread.join(0.3)  # it must wait for the accelerator, not run inside the training
            assert thread.is_alive() and not images

    dest = tmp_path / "b.safetensors"
    model.train_lora(B, dest, seed=1, on_step=on_step, **TRAIN)
    thread.join(CEILING_S)
    assert not errors, errors
    np.testing.assert_allclose(images[0], reference.a_image, atol=1e-5)
    same_file(dest, reference.b)
    assert_clean(model)


def test_a_failed_training_in_between_poisons_nothing(reference: Reference, tmp_path: Path) -> None:
    model = fresh()
    check_image(model, reference.a, reference.a_image)

    def fail(step: int, steps: int, loss: float) -> None:
        if step == 2:
            raise RuntimeError("canceled")

    with pytest.raises(RuntimeError, match="canceled"):
        model.train_lora(B, tmp_path / "x.safetensors", seed=1, on_step=fail, **TRAIN)
    assert not (tmp_path / "x.safetensors").exists()
    assert_clean(model)
    check_image(model, reference.a, reference.a_image)
    dest = tmp_path / "b.safetensors"
    model.train_lora(B, dest, seed=1, **TRAIN)
    same_file(dest, reference.b)
    assert_clean(model)


def test_an_adapter_left_behind_by_a_crashed_training_is_cleared(
    reference: Reference, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the old code left after a failure inside ``add_adapter``: a stray adapter."""
    from peft import LoraConfig

    from engine.image.pipeline import LORA_TARGETS

    model = fresh()
    check_image(model, reference.a, reference.a_image)
    model.pipe.unet.add_adapter(
        LoraConfig(r=2, lora_alpha=2, target_modules=list(LORA_TARGETS)), adapter_name="tada_fit"
    )
    dest = tmp_path / "b.safetensors"
    with caplog.at_level("WARNING", logger="engine.image.pipeline"):
        model.train_lora(B, dest, seed=1, **TRAIN)
    same_file(dest, reference.b)
    assert_clean(model)
    check_image(model, reference.a, reference.a_image)
    assert [r.getMessage() for r in caplog.records if "stray" in r.getMessage()] == [
        "image model: removing stray adapters ['tada_fit']"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="engine.image.pipeline"):
        model.train_lora(B, dest, seed=1, **TRAIN)  # an ordinary training has no strays
    assert not [r for r in caplog.records if "stray" in r.getMessage()]


def test_a_lora_that_fails_to_load_leaves_nothing_half_loaded(
    reference: Reference, tmp_path: Path
) -> None:
    model = fresh()
    check_image(model, reference.a, reference.a_image)
    good = load_file(str(reference.a))
    # The last matrix of the file loses columns: loading injects layers, then fails.
    last = sorted(good)[-1]
    bad = {**good, last: good[last][:, :1].contiguous()}
    broken = tmp_path / "broken.safetensors"
    save_file(bad, str(broken))
    with pytest.raises(ModelError, match="does not fit"):
        model.generate("tadz", lora=broken, **GEN)
    assert_clean(model)
    check_image(model, reference.a, reference.a_image)
    dest = tmp_path / "b.safetensors"
    model.train_lora(B, dest, seed=1, **TRAIN)
    same_file(dest, reference.b)
    assert_clean(model)


def test_denoising_loss_between_jobs_leaves_the_state_clean(
    reference: Reference, tmp_path: Path
) -> None:
    model = fresh()
    model.denoising_loss(A, lora=reference.a, samples=1)
    assert_clean(model)
    dest = tmp_path / "b.safetensors"
    model.train_lora(B, dest, seed=1, **TRAIN)
    same_file(dest, reference.b)
    check_image(model, reference.a, reference.a_image)


def test_evicted_adapters_leave_the_pipeline_too(reference: Reference, tmp_path: Path) -> None:
    model = fresh()
    model.max_adapters = 1
    check_image(model, reference.a, reference.a_image)
    check_image(model, reference.b, reference.b_image)
    assert len(model.loaded_adapters()) == 1
    model.train_lora(A, tmp_path / "a.safetensors", seed=1, **TRAIN)
    assert_clean(model)
    check_image(model, reference.a, reference.a_image)


def test_the_sdxl_layout_survives_the_same_interleaving(tmp_path: Path) -> None:
    settings = ImageSettings(tiny_arch="sdxl")
    model = ImageModel.from_settings(settings)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    model.train_lora(A, a, seed=1, **TRAIN)
    first = model.generate("tadz", lora=a, **GEN)
    model.train_lora(B, b, seed=1, **TRAIN)
    assert_clean(model)
    ref_b = tmp_path / "ref_b.safetensors"
    ImageModel.from_settings(settings).train_lora(B, ref_b, seed=1, **TRAIN)
    same_file(b, ref_b)
    np.testing.assert_allclose(model.generate("tadz", lora=a, **GEN), first, atol=1e-5)
    assert_clean(model)
