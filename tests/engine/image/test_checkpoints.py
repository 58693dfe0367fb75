"""Training checkpoints, the validation image and the training options: a training cut off
mid-way resumes at its last checkpoint and ends with the LoRA an uncut one makes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.image.pipeline import ImageModel, TrainOptions
from engine.image.settings import ARCH_DEFAULTS, ImageSettings, TrainingSettings
from engine.image.types import ModelError
from tests.engine.image.test_pipeline import examples

FIT: dict[str, Any] = {"rank": 4, "steps": 6, "learning_rate": 1e-2, "batch_size": 2, "seed": 3}


class Cut(Exception):
    """The worker going away in the middle of a training."""


@pytest.fixture(scope="module", params=["sd15", "flux"])
def model(request: pytest.FixtureRequest) -> ImageModel:
    return ImageModel.from_settings(ImageSettings(tiny_arch=request.param))


@pytest.mark.no_database
def test_a_cut_training_resumes_at_its_checkpoint_and_ends_as_an_uncut_one(
    model: ImageModel, tmp_path: Path
) -> None:
    uncut = tmp_path / "uncut.safetensors"
    model.train_lora(examples(), uncut, **FIT)

    ckpt = tmp_path / "train.checkpoint.pt"
    opts = TrainOptions(checkpoint=ckpt, checkpoint_every=2)
    seen: list[int] = []

    def cut_at_5(step: int, steps: int, loss: float) -> None:
        seen.append(step)
        if step == 5:
            raise Cut

    with pytest.raises(Cut):
        model.train_lora(
            examples(), tmp_path / "a.safetensors", on_step=cut_at_5, options=opts, **FIT
        )
    assert ckpt.is_file() and not (tmp_path / "a.safetensors").exists()
    assert torch.load(ckpt, weights_only=True)["step"] == 4

    # Another worker (a fresh model) takes the job back: it goes on from step 5, not 1.
    resumed: list[int] = []
    fresh = ImageModel.from_settings(ImageSettings(tiny_arch=model.arch))
    fit = fresh.train_lora(
        examples(),
        tmp_path / "a.safetensors",
        on_step=lambda step, steps, loss: resumed.append(step),
        options=opts,
        **FIT,
    )
    assert resumed == [5, 6]
    assert len(fit.losses) == 6
    got, want = load_file(str(tmp_path / "a.safetensors")), load_file(str(uncut))
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-4)


@pytest.mark.no_database
def test_a_checkpoint_made_for_other_settings_is_not_used(
    model: ImageModel, tmp_path: Path
) -> None:
    ckpt = tmp_path / "c.pt"

    def cut_at_3(step: int, steps: int, loss: float) -> None:
        if step == 3:
            raise Cut

    opts = TrainOptions(checkpoint=ckpt, checkpoint_every=2)
    with pytest.raises(Cut):
        model.train_lora(
            examples(),
            tmp_path / "x.safetensors",
            on_step=cut_at_3,
            options=opts,
            **FIT,
        )
    steps: list[int] = []
    other = {**FIT, "learning_rate": 5e-3}
    model.train_lora(
        examples(),
        tmp_path / "x.safetensors",
        on_step=lambda s, n, loss: steps.append(s),
        options=opts,
        **other,
    )
    assert steps[0] == 1  # started over: the saved moments belong to another run


@pytest.mark.no_database
def test_a_validation_image_is_drawn_at_each_checkpoint(model: ImageModel, tmp_path: Path) -> None:
    drawn: list[tuple[int, np.ndarray | None]] = []
    final: list[tuple[int, np.ndarray | None]] = []
    opts = TrainOptions(
        checkpoint=tmp_path / "v.pt",
        checkpoint_every=2,
        validation_prompt="tadz, a portrait photo",
        validation_steps=2,
        validation_guidance=3.5,
        on_checkpoint=lambda step, image: drawn.append((step, image)),
        on_final=lambda step, image: final.append((step, image)),
    )
    model.train_lora(examples(), tmp_path / "v.safetensors", options=opts, **FIT)
    assert [s for s, _ in drawn] == [2, 4]  # the final LoRA itself is step 6's
    # ...and its own image is drawn at the end (no checkpoint there).
    [(last, last_image)] = final
    assert last == 6 and last_image is not None and last_image.shape == (32, 32, 3)
    images = [i for _, i in drawn]
    assert all(i is not None and i.shape == (32, 32, 3) for i in images)
    assert np.abs(images[0] - images[1]).max() > 1e-4  # the LoRA moved between them
    assert not any(p.requires_grad for p in model.denoiser.parameters())


@pytest.mark.no_database
def test_gradient_checkpointing_is_on_while_training_and_off_after(
    model: ImageModel, tmp_path: Path
) -> None:
    during: list[bool] = []
    fit = model.train_lora(
        examples(),
        tmp_path / "g.safetensors",
        on_step=lambda s, n, loss: during.append(model.denoiser.is_gradient_checkpointing),
        options=TrainOptions(gradient_checkpointing=True),
        **FIT,
    )
    plain = model.train_lora(examples(), tmp_path / "p.safetensors", **FIT)
    assert all(during) and not model.denoiser.is_gradient_checkpointing
    np.testing.assert_allclose(fit.losses, plain.losses, rtol=1e-4)  # same maths, less memory


@pytest.mark.no_database
def test_the_8bit_optimiser_trains_with_8_bit_moments(model: ImageModel, tmp_path: Path) -> None:
    ckpt = tmp_path / "o.pt"
    opts = TrainOptions(optimizer="adamw8bit", checkpoint=ckpt, checkpoint_every=2)
    # bitsandbytes keeps tensors under 4096 values in 32 bits: a rank wide enough for 8.
    wide = {**FIT, "rank": 128, "steps": 30}
    before = model.denoising_loss(examples())

    def cut_at_3(step: int, steps: int, loss: float) -> None:
        if step == 3:
            raise Cut

    with pytest.raises(Cut):  # stopped after a checkpoint: its optimizer state is on disk
        model.train_lora(
            examples(), tmp_path / "o.safetensors", on_step=cut_at_3, options=opts, **wide
        )
    state = torch.load(ckpt, weights_only=True)["optimizer"]["state"]
    # bitsandbytes keeps its quantised moments under one key of each parameter's state.
    quant = [s.get("__bnb_optimizer_quant_state__", s) for s in state.values()]
    moments = [t for q in quant for k, t in q.items() if k in ("state1", "state2")]
    assert moments and all(t.dtype == torch.uint8 for t in moments)  # 8-bit, not float32
    steps: list[int] = []
    fit = model.train_lora(
        examples(),
        tmp_path / "o.safetensors",
        on_step=lambda s, n, loss: steps.append(s),
        options=opts,
        **wide,
    )
    assert steps[0] == 3 and len(fit.losses) == 30  # the 8-bit state resumed too
    assert model.denoising_loss(examples(), lora=tmp_path / "o.safetensors") < before


@pytest.mark.no_database
def test_an_8bit_optimiser_without_bitsandbytes_says_so(
    model: ImageModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    loaded = model.loaded_adapters()
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as on a machine without it
    with pytest.raises(ModelError, match="needs bitsandbytes"):
        model.train_lora(
            examples(),
            tmp_path / "o.safetensors",
            options=TrainOptions(optimizer="adamw8bit"),
            **FIT,
        )
    assert model.loaded_adapters() == loaded  # the training adapter left, nothing else did
    assert model._held_adapters() == set(loaded)


@pytest.mark.no_database
def test_unset_training_values_follow_the_architecture() -> None:
    cfg = TrainingSettings()
    assert cfg.for_arch("flux") == ARCH_DEFAULTS["flux"]
    assert cfg.for_arch("sdxl").rank == ARCH_DEFAULTS["sdxl"].rank != ARCH_DEFAULTS["sd15"].rank
    mine = TrainingSettings(rank=8, steps=10)
    assert (mine.for_arch("flux").rank, mine.for_arch("flux").steps) == (8, 10)
    assert mine.for_arch("flux").learning_rate == ARCH_DEFAULTS["flux"].learning_rate


def _stored(data_dir: Path, pattern: str) -> list[Path]:
    return list(Path(data_dir).rglob(pattern))


async def test_the_training_status_shows_the_latest_validation_image(tmp_path: Path) -> None:
    import io

    from PIL import Image

    from tests.conftest import register, running_engine
    from tests.engine.image.test_lora_api import h, path_of, settings_for, upload_zip, wait_final
    from tests.engine.image.zips import good_zip

    training = {"steps": 6, "rank": 4, "learning_rate": 1e-2, "batch_size": 2}
    settings = settings_for(
        tmp_path, training={**training, "checkpoint_every": 2, "validation_steps": 2}
    )
    async with running_engine(settings) as (_app, api):
        key = await register(api)
        upload_id = await upload_zip(api, key, good_zip(4))
        started = await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        assert started.json()["validation_image_url"] is None  # none before a checkpoint
        final = await wait_final(api, key, upload_id)
        assert final["status"] == "succeeded", final
        # The trained LoRA's own image (drawn at the last step), not the last checkpoint's.
        assert final["validation_step"] == 6
        image = await api.get(path_of(final["validation_image_url"]))
        assert image.status_code == 200
        assert Image.open(io.BytesIO(image.content)).size == (32, 32)
        listed = (await api.get("/api/loras/trainings", headers=h(key))).json()
        assert listed["trainings"][0]["validation_step"] == 6
        other = await register(api, "mallory@example.com")
        assert (
            await api.get(f"/api/loras/trainings/{upload_id}", headers=h(other))
        ).status_code == 404
        data_dir = settings.data_dir
    # The checkpoint is gone once the LoRA is saved; the validation image stays.
    assert not _stored(data_dir, "*.checkpoint.pt")
    assert _stored(data_dir, "*.validation.png")
