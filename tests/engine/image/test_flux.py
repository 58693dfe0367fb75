"""FLUX.1 on the tiny random FLUX: trained LoRAs lower the loss, change the image, and are
diffusers' own LoRA files (``FluxPipeline.load_lora_weights`` takes them as they are); the
architecture is read from the checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from safetensors import safe_open

from engine.image.flux import arch_of_folder
from engine.image.pipeline import FLUX_LORA_FILE_FORMAT, ImageModel
from engine.image.settings import ImageSettings
from engine.image.tiny import build_tiny_flux
from engine.image.types import ModelError
from tests.engine.image.test_pipeline import PROMPT, examples

GEN = {"steps": 4, "seed": 11, "guidance_scale": 3.5}


@pytest.fixture(scope="module")
def model() -> ImageModel:
    return ImageModel.from_settings(ImageSettings(tiny_arch="flux"))


@pytest.fixture(scope="module")
def trained(model: ImageModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    dest = tmp_path_factory.mktemp("flux") / "tadz.safetensors"
    model.train_lora(examples(), dest, rank=4, steps=40, learning_rate=1e-2, batch_size=4, seed=0)
    yield dest


@pytest.mark.no_database
def test_the_tiny_flux_is_flux_shaped_and_says_it_draws_noise(model: ImageModel) -> None:
    assert model.is_flux and model.arch == "flux" and not model.is_xl
    assert "noise" in model.label and "flux" in model.label
    assert model.pipe.vae.config.latent_channels == 16  # FLUX's latent space
    assert model.pipe.transformer.config.guidance_embeds  # FLUX.1 dev's layout
    assert model.native_size == 32


@pytest.mark.no_database
def test_training_lowers_the_flow_matching_loss(model: ImageModel, trained: Path) -> None:
    before = model.denoising_loss(examples())
    after = model.denoising_loss(examples(), lora=trained)
    assert after < before * 0.97, (before, after)


@pytest.mark.no_database
def test_the_lora_changes_the_image_and_reloads_the_same(model: ImageModel, trained: Path) -> None:
    base = model.generate(PROMPT, **GEN)
    with_lora = model.generate(PROMPT, lora=trained, **GEN)
    assert with_lora.shape == (32, 32, 3)
    assert np.abs(with_lora - base).max() > 1e-3
    np.testing.assert_allclose(
        model.generate(PROMPT, lora=trained, weight=0.0, **GEN), base, atol=1e-5
    )
    fresh = ImageModel.from_settings(ImageSettings(tiny_arch="flux"))
    np.testing.assert_allclose(fresh.generate(PROMPT, lora=trained, **GEN), with_lora, atol=1e-5)


@pytest.mark.no_database
def test_the_lora_file_is_diffusers_flux_layout_and_plain_diffusers_loads_it(
    model: ImageModel, trained: Path, tmp_path: Path
) -> None:
    with safe_open(str(trained), "pt") as fh:
        keys = set(fh.keys())
        meta = fh.metadata()
    # What FluxPipeline.save_lora_weights writes (and ComfyUI reads): transformer.<module>
    # .lora_A/.lora_B, the adapter config in the lora_adapter_metadata header.
    assert keys and all(k.startswith("transformer.") for k in keys)
    assert {k.rsplit(".", 2)[-2] for k in keys} == {"lora_A", "lora_B"}
    assert any(k.startswith("transformer.transformer_blocks.0.attn.to_q") for k in keys)
    assert any(k.startswith("transformer.single_transformer_blocks.0.attn.to_q") for k in keys)
    adapter = json.loads(meta["lora_adapter_metadata"])
    assert adapter["transformer.r"] == 4 and adapter["transformer.lora_alpha"] == 4
    assert meta["format"] == FLUX_LORA_FILE_FORMAT
    # diffusers alone, no engine code: the same weights give the same image.
    plain = build_tiny_flux(1234, 32)
    plain.set_progress_bar_config(disable=True)
    plain.load_lora_weights(str(trained))
    out = plain(
        prompt=PROMPT,
        num_inference_steps=GEN["steps"],
        guidance_scale=GEN["guidance_scale"],
        width=32,
        height=32,
        max_sequence_length=32,
        generator=torch.Generator().manual_seed(GEN["seed"]),
        output_type="np",
    ).images[0]
    np.testing.assert_allclose(out, model.generate(PROMPT, lora=trained, **GEN), atol=1e-5)


@pytest.mark.no_database
def test_a_flux_folder_is_detected_from_its_model_index(tmp_path: Path) -> None:
    build_tiny_flux(1234, 32).save_pretrained(str(tmp_path / "flux"))
    assert arch_of_folder(tmp_path / "flux") == "flux"
    loaded = ImageModel.from_settings(ImageSettings(base_model=tmp_path / "flux"))
    assert loaded.is_flux and isinstance(loaded.pipe, FluxPipeline)
    tiny = ImageModel.from_settings(ImageSettings(tiny_arch="flux"))
    np.testing.assert_allclose(
        loaded.generate(PROMPT, **GEN), tiny.generate(PROMPT, **GEN), atol=1e-5
    )
    index = tmp_path / "flux" / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "_class_name": "WanPipeline"}))
    with pytest.raises(ModelError, match=r"FLUX\.1"):
        arch_of_folder(tmp_path / "flux")


async def test_flux_trains_and_generates_through_the_api(tmp_path: Path) -> None:
    """The engine's own path (job handlers, per-architecture generation defaults) on FLUX."""
    import io

    from PIL import Image

    from tests.conftest import register, running_engine
    from tests.engine.image.test_lora_api import h, path_of, settings_for, upload_zip, wait_final
    from tests.engine.image.zips import good_zip

    async with running_engine(settings_for(tmp_path, tiny_arch="flux")) as (_app, api):
        key = await register(api)
        upload_id = await upload_zip(api, key, good_zip(4))
        started = await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        assert started.status_code == 202, started.text
        final = await wait_final(api, key, upload_id)
        assert final["status"] == "succeeded", final
        resp = await api.post(
            f"/api/loras/{final['id']}/generations",
            json={"prompt": "on a beach", "seed": 5},
            headers=h(key),
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert "flux" in body["model"] and "noise" in body["model"]
        image = await api.get(path_of(body["url"]))
        assert Image.open(io.BytesIO(image.content)).size == (32, 32)
