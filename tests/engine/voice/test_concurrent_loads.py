"""Voice models loaded while an image model loads in another thread of the same process.

A worker's voice back end warms up in its own thread while image jobs load the image model,
and two in-process engines each load both: the voice models must come out as they do when
loaded alone, and so must the image model (see tests/engine/image/test_concurrent_loads.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.image.settings import ImageSettings
from engine.image.tiny import build_tiny_pipeline
from engine.voice.neural import NeuralBackend
from engine.voice.random_model import build_random_model
from engine.voice.settings import VoiceSettings
from engine.voice.similarity import SpeakerEncoder
from tests.engine.image.test_concurrent_loads import (
    ROUNDS,
    assert_same_image,
    at_once,
    drawn,
)

pytestmark = [pytest.mark.no_database, pytest.mark.usefixtures("one_torch_thread")]


def speech_like() -> np.ndarray:
    """Two seconds of a gliding, wavering tone at 16 kHz: enough voiced sound to embed."""
    t = np.arange(32000) / 16000
    rng = np.random.default_rng(0)
    tone = np.sin(2 * np.pi * (140 + 40 * np.sin(2 * np.pi * 3 * t)) * t)
    return (0.5 * tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def embedded() -> np.ndarray:
    """A fresh encoder (its weights loaded now) embedding :func:`speech_like`."""
    return SpeakerEncoder().embed(speech_like(), 16000)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "sd15"
    build_tiny_pipeline(1234, 32, "sd15").save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_vibevoice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_model(tmp_path_factory.mktemp("vibevoice") / "tiny-vibevoice")


def test_the_speaker_encoder_loads_whole_while_an_image_checkpoint_loads(
    checkpoint: Path,
) -> None:
    image = drawn(ImageSettings(base_model=checkpoint))
    alone = (embedded(), image())
    for _ in range(ROUNDS):
        voice, picture = at_once(embedded, image)
        assert not isinstance(voice, BaseException), f"{type(voice).__name__}: {voice}"
        np.testing.assert_allclose(voice, alone[0], atol=1e-6)
        assert_same_image(picture, alone[1])


def test_a_half_precision_neural_voice_loads_while_an_image_model_is_built(
    tiny_vibevoice: Path,
) -> None:
    # transformers sets the process's default dtype to the model's while it builds it.
    settings = VoiceSettings.model_validate(
        {"backend": "neural", "neural_model": str(tiny_vibevoice), "neural_dtype": "bfloat16"}
    )

    def neural_weights() -> dict[str, torch.Tensor]:
        backend = NeuralBackend(settings)
        model = backend.model()
        assert model is not None, backend.unavailable
        return {k: v.detach().clone() for k, v in model.model.state_dict().items()}

    image = drawn(ImageSettings())
    alone: tuple[dict[str, torch.Tensor], Any] = (neural_weights(), image())
    for _ in range(ROUNDS):
        voice, picture = at_once(neural_weights, image)
        assert not isinstance(voice, BaseException), f"{type(voice).__name__}: {voice}"
        assert voice.keys() == alone[0].keys()
        for k, want in alone[0].items():
            torch.testing.assert_close(voice[k], want, atol=0, rtol=0)
        assert_same_image(picture, alone[1])
