"""The two demo endpoints: 503 until configured, then images from demo LoRAs."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from engine.image.pipeline import ImageModel
from engine.image.settings import ImageSettings
from engine.image.types import TrainImage
from engine.settings import JobSettings
from tests.conftest import get_from, make_settings, register, running_engine
from tests.engine.image.test_lora_api import IMAGE, h
from tests.engine.image.zips import image_bytes
from tests.waiting import CEILING_S


@pytest.fixture(scope="module")
def demo_loras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two demo LoRAs trained on the tiny base, as an operator would train them."""
    model = ImageModel.from_settings(ImageSettings())
    out = tmp_path_factory.mktemp("demos")
    loras = {}
    for n, (name, word) in enumerate((("tadz", "tadz"), ("pudgy", "pudgy penguin"))):
        examples = [
            TrainImage(Image.open(io.BytesIO(image_bytes(i + 5 * n))).convert("RGB"), word)
            for i in range(4)
        ]
        loras[name] = out / f"{name}.safetensors"
        model.train_lora(examples, loras[name], rank=4, steps=8, learning_rate=1e-2, seed=n)
    return loras


@pytest.mark.parametrize("name", ["tadz", "pudgy"])
async def test_an_unconfigured_demo_is_503_telling_the_operator_what_to_set(
    api: httpx.AsyncClient, alice_key: str, name: str
) -> None:
    resp = await api.post(f"/api/demo/{name}", json={"prompt": "hi"}, headers=h(alice_key))
    assert resp.status_code == 503
    detail = resp.json()["detail"]
    assert f"[engine.image.demos.{name}]" in detail
    assert "lora_path" in detail and "trigger_word" in detail


async def test_demos_generate_with_their_lora_and_trigger_word(
    tmp_path: Path, demo_loras: dict[str, Path]
) -> None:
    image = {
        **IMAGE,
        "generation": {"steps": 3, "output_format": "webp"},
        "demos": {
            "tadz": {"lora_path": str(demo_loras["tadz"]), "trigger_word": "tadz"},
            "pudgy": {"lora_path": str(demo_loras["pudgy"]), "trigger_word": "pudgy penguin"},
        },
    }
    settings = make_settings(
        tmp_path / "e",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image=image,
    )
    async with running_engine(settings) as (_, api):
        key = await register(api)
        assert (await api.post("/api/demo/tadz", json={"prompt": "x"})).status_code == 401
        assert (
            await api.post("/api/demo/tadz", json={"prompt": ""}, headers=h(key))
        ).status_code == 422
        for name, word in (("tadz", "tadz"), ("pudgy", "pudgy penguin")):
            resp = await api.post(
                f"/api/demo/{name}", json={"prompt": "on a beach"}, headers=h(key)
            )
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["demo"] == name and body["prompt"] == "on a beach"
            assert body["enhanced_prompt"].startswith(f"{word}, on a beach, ")
            assert body["negative_prompt"] and body["lora_id"] is None
            img = await get_from(api, body["url"])
            assert img.status_code == 200
            assert Image.open(io.BytesIO(img.content)).format == "WEBP"
        listed = (await api.get("/api/loras/generations", headers=h(key))).json()
        assert [g["demo"] for g in listed] == ["pudgy", "tadz"]


async def test_a_prompt_asking_for_explicit_content_is_422_before_any_work(
    tmp_path: Path, demo_loras: dict[str, Path]
) -> None:
    image = {
        **IMAGE,
        "generation": {"steps": 2},
        "demos": {"tadz": {"lora_path": str(demo_loras["tadz"]), "trigger_word": "tadz"}},
    }
    settings = make_settings(
        tmp_path / "e",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=120),
        image=image,
    )
    async with running_engine(settings) as (_, api):
        key = await register(api)
        resp = await api.post(
            "/api/demo/tadz", json={"prompt": "a Naked  woman on a beach"}, headers=h(key)
        )
        assert resp.status_code == 422, resp.text
        [error] = resp.json()["detail"]
        assert error["loc"] == ["body", "prompt"] and "explicit" in error["msg"]
        # No generation was queued or made.
        assert (await api.get("/api/loras/generations", headers=h(key))).json() == []
    # An operator serving age-restricted communities alone can turn the refusal off.
    image["enhancer"] = {"refuse_explicit": False}
    settings = make_settings(
        tmp_path / "f",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=120),
        image=image,
    )
    async with running_engine(settings) as (_, api):
        # Another member: on the PostgreSQL pass both engines share one database.
        key = await register(api, "bob@example.com")
        resp = await api.post("/api/demo/tadz", json={"prompt": "nude"}, headers=h(key))
        assert resp.status_code == 200, resp.text


async def test_a_demo_whose_lora_file_is_missing_is_503(tmp_path: Path) -> None:
    image = {
        "demos": {
            "pudgy": {"lora_path": str(tmp_path / "gone.safetensors"), "trigger_word": "pudgy"}
        }
    }
    async with running_engine(make_settings(tmp_path / "e", image=image)) as (_, api):
        key = await register(api)
        resp = await api.post("/api/demo/pudgy", json={"prompt": "x"}, headers=h(key))
        assert resp.status_code == 503 and "gone.safetensors" in resp.json()["detail"]
        resp = await api.post("/api/demo/tadz", json={"prompt": "x"}, headers=h(key))
        assert resp.status_code == 503 and "demos.tadz" in resp.json()["detail"]
