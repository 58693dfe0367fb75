"""Image models of two engines in one process, loaded at the same moment.

Two in-process engines (a test harness with two bots, or a worker's voice and image back
ends) each load their own models from their own threads. diffusers, transformers, peft and
accelerate load under process-wide patches (meta-device parameter registration, skipped
weight init, the default dtype, the global RNG seeded for the tiny weights), so a build in
one thread must never overlap a load in another: each model must come out exactly as it
does when built alone. Every case runs a few rounds, lined up by a barrier, because a race
shows only when the two overlap.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.image.pipeline import ImageModel
from engine.image.settings import ImageSettings
from engine.image.tiny import build_tiny_pipeline
from tests.engine.image.test_pipeline import examples
from tests.waiting import CEILING_S

pytestmark = [pytest.mark.no_database, pytest.mark.usefixtures("one_torch_thread")]

ROUNDS = 4
PROMPT = "tadz, a blue disc"
GEN: dict[str, Any] = {"steps": 2, "seed": 11}
FIT: dict[str, Any] = {"rank": 4, "steps": 2, "learning_rate": 1e-2, "batch_size": 2, "seed": 5}


def at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` in threads released together; each one's result or the exception it raised."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # the failure is the result the test reports
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=CEILING_S)
    return results


def drawn(settings: ImageSettings) -> Callable[[], np.ndarray]:
    """Load a model from ``settings`` and draw one image with it."""
    return lambda: ImageModel.from_settings(settings).generate(PROMPT, **GEN)


def assert_same_image(got: Any, want: np.ndarray) -> None:
    if isinstance(got, BaseException):
        raise AssertionError(f"{type(got).__name__}: {got}") from got
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local diffusers folder (another seed than the built-in tiny model's)."""
    folder = tmp_path_factory.mktemp("ckpt") / "sd15"
    build_tiny_pipeline(1234, 32, "sd15").save_pretrained(str(folder))
    return folder


SOURCES = {
    "tiny": lambda ckpt: ImageSettings(),
    "checkpoint": lambda ckpt: ImageSettings(base_model=ckpt),
}


@pytest.mark.parametrize(
    ("first", "second"),
    [("tiny", "tiny"), ("checkpoint", "checkpoint"), ("tiny", "checkpoint")],
)
def test_two_models_loaded_at_once_both_draw_what_each_draws_alone(
    first: str, second: str, checkpoint: Path
) -> None:
    settings = [SOURCES[first](checkpoint), SOURCES[second](checkpoint)]
    alone = [drawn(s)() for s in settings]
    for _ in range(ROUNDS):
        got = at_once(*(drawn(s) for s in settings))
        for image, want in zip(got, alone, strict=True):
            assert_same_image(image, want)


def test_a_lora_loading_in_one_model_leaves_a_model_being_built_whole(tmp_path: Path) -> None:
    # diffusers loads a LoRA through peft with its modules created on the meta device.
    serving = ImageModel.from_settings(ImageSettings())
    lora = tmp_path / "lora.safetensors"
    serving.train_lora(examples(), lora, **FIT)
    with_lora = serving.generate(PROMPT, lora=lora, **GEN)
    alone = drawn(ImageSettings())()
    for i in range(ROUNDS):
        # A new file each round (a new adapter name): the LoRA loads again, not from cache.
        fresh = shutil.copy(lora, tmp_path / f"lora-{i}.safetensors")
        got = at_once(
            partial(serving.generate, PROMPT, lora=Path(fresh), **GEN),
            drawn(ImageSettings()),
        )
        assert_same_image(got[0], with_lora)
        assert_same_image(got[1], alone)


def test_two_models_training_at_once_write_the_lora_one_writes_alone(tmp_path: Path) -> None:
    # The adapter's first weights come from the seeded RNG, which is one for the process.
    models = [ImageModel.from_settings(ImageSettings()) for _ in range(2)]
    alone = tmp_path / "alone.safetensors"
    models[0].train_lora(examples(), alone, **FIT)
    want = load_file(str(alone))
    for r in range(ROUNDS):
        dests = [tmp_path / f"{r}-{i}.safetensors" for i in range(2)]
        got = at_once(
            *(
                lambda m=m, d=d: m.train_lora(examples(), d, **FIT)
                for m, d in zip(models, dests, strict=True)
            )
        )
        for fit in got:
            assert not isinstance(fit, BaseException), f"{type(fit).__name__}: {fit}"
        for dest in dests:
            lora = load_file(str(dest))
            assert lora.keys() == want.keys()
            for k in want:
                torch.testing.assert_close(lora[k], want[k], atol=1e-6, rtol=1e-5)
