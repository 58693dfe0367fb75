"""LoRA files that travel: ours load in diffusers (kohya keys, as ComfyUI and A1111 read
them), and LoRAs saved by diffusers/peft elsewhere, in either key style, draw here."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from peft import LoraConfig, inject_adapter_in_model
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from engine.image.pipeline import (
    LORA_FILE_FORMAT,
    LORA_TARGETS,
    ImageModel,
)
from engine.image.settings import ImageSettings
from engine.image.tiny import build_tiny_pipeline
from engine.image.types import TrainImage
from engine.settings import JobSettings
from tests.conftest import make_settings, register, running_engine
from tests.engine.image.test_adapters import assert_clean
from tests.engine.image.test_lora_api import IMAGE, h
from tests.engine.image.zips import image_bytes
from tests.waiting import CEILING_S

PROMPT = "tadz, a blue disc"
STEPS = 3
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def examples() -> list[TrainImage]:
    return [
        TrainImage(Image.open(io.BytesIO(image_bytes(i, 40))).convert("RGB"), PROMPT)
        for i in range(2)
    ]


def draw(pipe: Any, seed: int = 3) -> np.ndarray:
    """What ``ImageModel.generate`` asks of the pipeline, asked of a plain diffusers one."""
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt=PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=7.0,
        width=32,
        height=32,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    )
    return np.asarray(out.images[0], dtype=np.float32)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_our_lora_file_has_kohya_keys_and_diffusers_loads_it(arch: str, tmp_path: Path) -> None:
    model = ImageModel.from_settings(ImageSettings(tiny_arch=arch))
    dest = tmp_path / "ours.safetensors"
    model.train_lora(examples(), dest, rank=4, steps=3, learning_rate=1e-2, seed=2)
    with safe_open(str(dest), "pt") as fh:
        keys = set(fh.keys())
        meta = fh.metadata()
        alphas = {k: float(fh.get_tensor(k)) for k in keys if k.endswith(".alpha")}
    modules = {k.split(".")[0] for k in keys}
    assert all(m.startswith("lora_unet_") for m in modules)
    assert all(
        m.rsplit("_", 2)[-2:] in (["to", "q"], ["to", "k"], ["to", "v"]) or m.endswith("to_out_0")
        for m in modules
    )
    assert keys == {
        f"{m}.{part}" for m in modules for part in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    assert set(alphas.values()) == {4.0}
    assert meta["format"] == LORA_FILE_FORMAT and meta["ss_network_dim"] == "4"

    plain = build_tiny_pipeline(1234, 32, arch)
    plain.load_lora_weights(str(dest))  # diffusers' own loader, from the path, kohya keys
    expected = model.generate(PROMPT, lora=dest, steps=STEPS, seed=3)
    np.testing.assert_allclose(draw(plain), expected, atol=1e-5)
    base = model.generate(PROMPT, steps=STEPS, seed=3)
    assert np.abs(expected - base).max() > 1e-3  # the LoRA does something


Foreign = tuple[Any, dict[str, dict[str, torch.Tensor]], dict[str, dict[str, Any]]]


def foreign_lora(arch: str, with_text_encoder: bool) -> Foreign:
    """A LoRA made with peft on a pipeline of the same base, as another trainer would."""
    pipe = build_tiny_pipeline(1234, 32, arch)
    gen = torch.Generator().manual_seed(7)
    parts = {"unet": (pipe.unet, list(LORA_TARGETS))}
    if with_text_encoder:
        parts["text_encoder"] = (pipe.text_encoder, TEXT_TARGETS)
    states = {}
    configs = {}
    for name, (module, targets) in parts.items():
        config = LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=targets)
        # peft itself, not transformers' add_adapter (which wants a newer peft).
        inject_adapter_in_model(config, module, adapter_name="default")
        with torch.no_grad():
            for n, p in module.named_parameters():
                if "lora_B" in n:  # peft starts B at zero: give the LoRA an effect
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        states[name] = {
            k.replace(".default.", "."): v.detach().clone()
            for k, v in module.state_dict().items()
            if ".lora_" in k
        }
        configs[name] = config.to_dict()
    return pipe, states, configs


def save_diffusers_style(arch: str, lora: Foreign, dest: Path) -> Path:
    """As diffusers' training scripts save: ``save_lora_weights`` with the peft configs."""
    _, states, configs = lora
    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    layers = {f"{k}_lora_layers": convert_state_dict_to_diffusers(v) for k, v in states.items()}
    meta = {f"{k}_lora_adapter_metadata": v for k, v in configs.items()}
    cls.save_lora_weights(str(dest), safe_serialization=True, **layers, **meta)
    return dest / "pytorch_lora_weights.safetensors"


def save_kohya_style(lora: Foreign, dest: Path) -> Path:
    """peft's state dicts through diffusers' own kohya converter."""
    states = lora[1]
    prefixed = {f"{part}.{k}": v for part, state in states.items() for k, v in state.items()}
    kohya = convert_state_dict_to_kohya(prefixed)
    # Our alpha is 8 at rank 4; diffusers' converter writes alpha = rank.
    kohya = {
        k: (torch.tensor(8.0) if k.endswith(".alpha") else v.contiguous()) for k, v in kohya.items()
    }
    path = dest / "kohya.safetensors"
    save_file(kohya, str(path))
    return path


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize("with_text_encoder", [False, True], ids=["unet", "unet+te"])
def test_a_lora_saved_elsewhere_draws_the_same_in_either_key_style(
    arch: str, with_text_encoder: bool, tmp_path: Path
) -> None:
    lora = foreign_lora(arch, with_text_encoder)
    expected = draw(lora[0])
    files = {
        "diffusers": save_diffusers_style(arch, lora, tmp_path / "d"),
        "kohya": save_kohya_style(lora, tmp_path),
    }
    with safe_open(str(files["kohya"]), "pt") as fh:
        kohya_keys = list(fh.keys())
    assert all(k.startswith(("lora_unet_", "lora_te1_")) for k in kohya_keys)
    model = ImageModel.from_settings(ImageSettings(tiny_arch=arch))
    base = model.generate(PROMPT, steps=STEPS, seed=3)
    assert np.abs(expected - base).max() > 1e-3
    for style, path in files.items():
        got = model.generate(PROMPT, lora=path, steps=STEPS, seed=3)
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=style)
        assert_clean(model)
    # A text-encoder LoRA leaves nothing behind for a UNet-only one or the base.
    ours = tmp_path / "ours.safetensors"
    model.train_lora(examples(), ours, rank=4, steps=2, learning_rate=1e-2, seed=2)
    only_ours = ImageModel.from_settings(ImageSettings(tiny_arch=arch))
    np.testing.assert_allclose(
        model.generate(PROMPT, lora=ours, steps=STEPS, seed=3),
        only_ours.generate(PROMPT, lora=ours, steps=STEPS, seed=3),
        atol=1e-5,
    )
    np.testing.assert_allclose(model.generate(PROMPT, steps=STEPS, seed=3), base, atol=1e-6)
    np.testing.assert_allclose(
        model.generate(PROMPT, lora=files["kohya"], steps=STEPS, seed=3), expected, atol=1e-5
    )
    assert_clean(model)


async def test_a_demo_can_be_a_lora_trained_elsewhere(tmp_path: Path) -> None:
    lora = foreign_lora("sd15", with_text_encoder=True)
    diffusers_file = save_diffusers_style("sd15", lora, tmp_path / "d")
    kohya_file = save_kohya_style(lora, tmp_path)
    image = {
        **IMAGE,
        "demos": {
            "tadz": {"lora_path": str(diffusers_file), "trigger_word": "tadz"},
            "pudgy": {"lora_path": str(kohya_file), "trigger_word": "pudgy"},
        },
    }
    settings = make_settings(
        tmp_path / "e",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image=image,
    )
    async with running_engine(settings) as (_, api):
        key = await register(api)
        for name in ("tadz", "pudgy"):
            resp = await api.post(f"/api/demo/{name}", json={"prompt": "hi"}, headers=h(key))
            assert resp.status_code == 200, resp.text
            assert resp.json()["demo"] == name


def test_diffusers_and_kohya_files_of_one_lora_are_one_image(tmp_path: Path) -> None:
    """A sanity check of the two writers above, independent of the engine."""
    lora = foreign_lora("sd15", with_text_encoder=False)
    expected = draw(lora[0])
    files = (save_diffusers_style("sd15", lora, tmp_path / "d"), save_kohya_style(lora, tmp_path))
    for path in files:
        plain = build_tiny_pipeline(1234, 32, "sd15")
        plain.load_lora_weights(str(path))
        np.testing.assert_allclose(draw(plain), expected, atol=1e-5)
