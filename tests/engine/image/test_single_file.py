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
