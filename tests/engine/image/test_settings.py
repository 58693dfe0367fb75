"""``[engine.image]``: defaults work with no config, mistakes are refused at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.image.settings import TINY_MODEL_LABEL, image_settings
from engine.services import build_services
from engine.settings import SettingsError, load_engine_settings
from tests.conftest import make_settings

pytestmark = pytest.mark.no_database

ROOT = Path(__file__).resolve().parents[3]


def test_no_config_means_the_tiny_model_labelled_as_noise() -> None:
    settings = image_settings({})
    assert settings.is_tiny and settings.model_label == TINY_MODEL_LABEL
    assert "draws noise" in settings.model_label


def test_the_example_config_is_valid() -> None:
    engine = load_engine_settings(ROOT / "config.example.toml", environ={})
    settings = image_settings(engine.image)
    assert settings.is_tiny and settings.zip.min_images == 4 and settings.demos == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"base_model": "/nonexistent/model"}, "neither a diffusers checkpoint folder"),
        ({"demos": {"other": {"lora_path": "x", "trigger_word": "y"}}}, "unknown demo"),
        ({"demos": {"tadz": {"lora_path": "x"}}}, "trigger_word"),
        ({"enhancer": {"backend": "openai"}}, "needs base_url and model"),
        ({"zip": {"min_images": 10, "max_images": 5}}, "min_images"),
        ({"training": {"stepz": 5}}, "stepz"),
    ],
)
def test_bad_image_settings_are_refused_with_a_reason(raw: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        image_settings(raw)


def test_a_checkpoint_dir_with_a_model_index_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    settings = image_settings({"base_model": str(tmp_path)})
    assert not settings.is_tiny and settings.model_label == str(tmp_path)


def test_the_engine_refuses_to_start_with_bad_image_settings(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, image={"generation": {"output_format": "gif"}})
    with pytest.raises(SettingsError, match=r"\[engine\.image\]"):
        build_services(settings)
