"""A single-file ``.safetensors`` base model: the architecture read from its tensor names
(diffusers' own detection), and a clear error while no local config folder is named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES
from safetensors.torch import save_file

from engine.image.flux import arch_of_single_file
from engine.image.pipeline import ImageModel
from engine.image.settings import ImageSettings
from engine.image.types import ModelError

pytestmark = pytest.mark.no_database


def _file(tmp_path: Path, name: str, keys: dict[str, tuple[int, ...]]) -> Path:
    path = tmp_path / f"{name}.safetensors"
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
    return path


FLUX_KEY = CHECKPOINT_KEY_NAMES["flux"][0]


@pytest.mark.parametrize(
    ("name", "keys", "arch"),
    [
        ("sd15", {CHECKPOINT_KEY_NAMES["v1"]: (4,)}, "sd15"),
        ("sdxl", {CHECKPOINT_KEY_NAMES["xl_base"]: (4,)}, "sdxl"),
        (
            "flux-dev",
            {FLUX_KEY: (4,), "guidance_in.in_layer.bias": (4,), "img_in.weight": (8, 64)},
            "flux",
        ),
        ("flux-schnell", {FLUX_KEY: (4,), "img_in.weight": (8, 64)}, "flux"),
    ],
)
def test_the_architecture_is_read_from_the_tensor_names(
    tmp_path: Path, name: str, keys: dict[str, tuple[int, ...]], arch: str
) -> None:
    # Named "model" whatever it holds: the file's name is never what decides.
    assert arch_of_single_file(_file(tmp_path, "model", keys)) == arch


def test_an_unknown_file_is_refused_not_guessed(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"not an SD 1\.5, SDXL or FLUX"):
        arch_of_single_file(_file(tmp_path, "odd", {"encoder.weight": (4,)}))
    fill = {FLUX_KEY: (4,), "guidance_in.in_layer.bias": (4,), "img_in.weight": (8, 384)}
    with pytest.raises(ModelError, match="flux-fill"):
        arch_of_single_file(_file(tmp_path, "fill", fill))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="not a readable"):
        arch_of_single_file(tmp_path / "junk.safetensors")


def test_a_single_file_needs_a_local_config_folder(tmp_path: Path) -> None:
    path = _file(tmp_path, "sdxl", {CHECKPOINT_KEY_NAMES["xl_base"]: (4,)})
    settings = ImageSettings(base_model=path)  # accepted as a base model
    with pytest.raises(ModelError, match="single_file_config"):
        ImageModel.from_settings(settings)
    with pytest.raises(ValueError, match="single-file"):
        ImageSettings(base_model=tmp_path / "missing.safetensors")


def test_a_single_file_sd15_checkpoint_loads_offline_and_draws_as_its_folder(
    tmp_path: Path,
) -> None:
    import numpy as np
    from PIL import Image

    from engine.image.tiny import build_tiny_pipeline
    from engine.image.types import TrainImage
    from tests.engine.image.ldm_files import write_sd15_single_file

    pipe = build_tiny_pipeline(1234, 32, "sd15")
    pipe.save_pretrained(str(tmp_path / "config"))  # the local config folder
    single = write_sd15_single_file(pipe, tmp_path / "my-model.safetensors")
    assert arch_of_single_file(single) == "sd15"
    model = ImageModel.from_settings(
        ImageSettings(base_model=single, single_file_config=tmp_path / "config")
    )
    assert not model.is_xl and not model.is_flux and model.label == str(single)
    for name in ("unet", "vae", "text_encoder"):  # the file's weights, every one of them
        want, got = getattr(pipe, name).state_dict(), getattr(model.pipe, name).state_dict()
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k].to(want[k].dtype)) for k in want), name
    folder = ImageModel.from_settings(ImageSettings(base_model=tmp_path / "config"))
    gen = {"steps": 3, "seed": 4}
    np.testing.assert_allclose(
        model.generate("tadz", **gen), folder.generate("tadz", **gen), atol=1e-5
    )
    images = [TrainImage(Image.new("RGB", (32, 32), (60 * i, 90, 30)), "tadz") for i in range(4)]
    model.train_lora(images, tmp_path / "lora.safetensors", rank=4, steps=2, learning_rate=1e-3)
    assert model.generate("tadz", lora=tmp_path / "lora.safetensors", **gen).shape == (32, 32, 3)
    other = tmp_path / "flux-config"
    build_tiny_pipeline(1234, 32, "flux").save_pretrained(str(other))
    with pytest.raises(ModelError, match="not a sd15 folder"):
        ImageModel.from_settings(ImageSettings(base_model=single, single_file_config=other))
