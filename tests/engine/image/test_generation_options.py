"""The engine's optional generation controls (seed, negative prompt, aspect ratio, variations):
extensions of the hosted contract, which carries only ``prompt``."""

from __future__ import annotations

import io
import math
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from engine.app import create_app
from engine.image.types import ASPECT_RATIOS, aspect_size
from tests.conftest import get_from, make_settings, register
from tests.engine.image.test_lora_api import h, upload_zip, wait_final
from tests.engine.image.zips import good_zip

Engine = tuple[FastAPI, httpx.AsyncClient]
Trained = tuple[str, str, dict]


async def generate(api: httpx.AsyncClient, key: str, lora: str, **body: object) -> dict:
    resp = await api.post(
        f"/api/loras/{lora}/generations", json={"prompt": "a cat", **body}, headers=h(key)
    )
    assert resp.status_code == 200, resp.text
    out: dict = resp.json()
    return out


async def pixels(api: httpx.AsyncClient, generation: dict) -> bytes:
    img = await get_from(api, generation["url"])
    assert img.status_code == 200
    return img.content


async def test_the_seed_is_returned_and_the_same_seed_draws_the_same_image(
    engine_app: Engine, trained: Trained
) -> None:
    _, api = engine_app
    key, _, training = trained
    lora = training["id"]
    first = await generate(api, key, lora)
    assert isinstance(first["seed"], int)
    again = await generate(api, key, lora, seed=first["seed"])
    assert again["seed"] == first["seed"] and again["id"] != first["id"]
    assert again["enhanced_prompt"] == first["enhanced_prompt"]
    assert await pixels(api, again) == await pixels(api, first)
    other = await generate(api, key, lora, seed=(first["seed"] + 1) % 2**31)
    assert await pixels(api, other) != await pixels(api, first)


async def test_a_negative_prompt_leads_the_default_negative_terms(
    engine_app: Engine, trained: Trained
) -> None:
    _, api = engine_app
    key, _, training = trained
    plain = await generate(api, key, training["id"], seed=9)
    neg = await generate(api, key, training["id"], seed=9, negative_prompt="  hats, dogs ")
    assert neg["negative_prompt"] == f"hats, dogs, {plain['negative_prompt']}"
    assert neg["enhanced_prompt"] == plain["enhanced_prompt"]
    assert await pixels(api, neg) != await pixels(api, plain)


@pytest.mark.parametrize(
    ("side", "multiple", "ratio", "expected"),
    [
        (1024, 64, "1:1", (1024, 1024)),
        (1024, 64, "16:9", (1344, 768)),  # SDXL's own bucket
        (1024, 64, "9:16", (768, 1344)),
        (1024, 64, "3:2", (1280, 832)),
        (512, 64, "16:9", (704, 384)),
        (512, 64, "2:3", (448, 640)),
        (32, 8, "16:9", (40, 24)),  # the tiny model (diffusers wants multiples of 8)
    ],
)
def test_aspect_ratios_map_to_sizes_the_model_can_draw(
    side: int, multiple: int, ratio: str, expected: tuple[int, int]
) -> None:
    assert aspect_size(ratio, side, multiple) == expected


@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
@pytest.mark.parametrize(("side", "multiple"), [(512, 64), (768, 64), (1024, 64)])
def test_every_aspect_ratio_keeps_its_shape_and_the_native_pixel_count(
    ratio: str, side: int, multiple: int
) -> None:
    w, h = aspect_size(ratio, side, multiple)
    a, b = (int(x) for x in ratio.split(":"))
    assert w % multiple == 0 and h % multiple == 0
    assert math.isclose(w / h, a / b, rel_tol=0.1)
    assert math.isclose(w * h, side * side, rel_tol=0.15)


async def test_an_aspect_ratio_sets_the_image_size(engine_app: Engine, trained: Trained) -> None:
    _, api = engine_app
    key, _, training = trained
    for ratio, size in (("16:9", (40, 24)), ("2:3", (24, 40)), ("1:1", (32, 32))):
        gen = await generate(api, key, training["id"], aspect_ratio=ratio)
        assert (gen["width"], gen["height"]) == size, ratio
        assert Image.open(io.BytesIO(await pixels(api, gen))).size == size


async def test_a_variation_keeps_the_prompt_and_size_with_a_new_seed_and_names_its_parent(
    engine_app: Engine, trained: Trained
) -> None:
    _, api = engine_app
    key, upload_id, training = trained
    parent = await generate(
        api, key, training["id"], seed=5, aspect_ratio="16:9", negative_prompt="hats"
    )
    assert parent["variation_of"] is None
    child = await generate(api, key, training["id"], variation_of=parent["id"])
    assert child["variation_of"] == parent["id"]
    assert child["seed"] != parent["seed"]
    for field in ("prompt", "enhanced_prompt", "negative_prompt", "width", "height"):
        assert child[field] == parent[field], field
    assert await pixels(api, child) != await pixels(api, parent)
    # Through the other path (the upload id) too, and the parent is kept in every read.
    grandchild = await generate(api, key, upload_id, variation_of=child["id"])
    assert grandchild["variation_of"] == child["id"]
    one = (await api.get(f"/api/loras/generations/{child['id']}", headers=h(key))).json()
    assert one["variation_of"] == parent["id"]
    listed = (await api.get("/api/loras/generations", headers=h(key))).json()
    assert {g["id"]: g["variation_of"] for g in listed}[grandchild["id"]] == child["id"]


async def test_bad_extension_values_are_422_with_a_detail(
    engine_app: Engine, trained: Trained
) -> None:
    _, api = engine_app
    key, _, training = trained
    lora = training["id"]
    parent = await generate(api, key, lora)
    bob = await register(api, "bob@example.com")
    bob_upload = await upload_zip(api, bob, good_zip(4))
    assert (await api.post(f"/api/loras/trainings/{bob_upload}", headers=h(bob))).status_code == 202
    assert (await wait_final(api, bob, bob_upload))["status"] == "succeeded"
    bobs = await generate(api, bob, bob_upload)
    other_upload = await upload_zip(api, key, good_zip(5))
    await api.post(f"/api/loras/trainings/{other_upload}", headers=h(key))
    assert (await wait_final(api, key, other_upload))["status"] == "succeeded"
    elsewhere = await generate(api, key, other_upload)

    cases: list[tuple[dict[str, object], str, str]] = [
        ({"seed": -1}, "seed", "greater than or equal"),
        ({"seed": 2**31}, "seed", "less than or equal"),
        ({"seed": "abc"}, "seed", "integer"),
        ({"aspect_ratio": "5:4"}, "aspect_ratio", "16:9"),
        ({"aspect_ratio": 1.5}, "aspect_ratio", "1:1"),
        ({"negative_prompt": "x" * 1001}, "negative_prompt", "at most 1000"),
        ({"variation_of": "nope"}, "variation_of", "no generation of yours"),
        ({"variation_of": bobs["id"]}, "variation_of", "no generation of yours"),
        ({"variation_of": elsewhere["id"]}, "variation_of", "another LoRA"),
        ({"variation_of": parent["id"], "seed": 3}, "seed", "leave seed out"),
        ({"variation_of": parent["id"], "aspect_ratio": "1:1"}, "aspect_ratio", "leave"),
        ({"variation_of": parent["id"], "prompt": "a dog"}, "prompt", "parent's prompt"),
    ]
    for body, field, words in cases:
        resp = await api.post(
            f"/api/loras/{lora}/generations",
            json={"prompt": "a cat", **body},
            headers=h(key),
        )
        assert resp.status_code == 422, (body, resp.text)
        detail = resp.json()["detail"]
        assert any(d["loc"][-1] == field and words in d["msg"] for d in detail), (body, detail)


def test_the_openapi_document_marks_every_extension(tmp_path: Path) -> None:
    """The hosted contract's body is ``prompt``; everything else says it is ours."""
    app = create_app(make_settings(tmp_path / "engine"))
    doc = TestClient(app).get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    body = schemas["GenerateLoraRequest"]["properties"]
    assert set(body) == {"prompt", "seed", "negative_prompt", "aspect_ratio", "variation_of"}
    assert body["prompt"].get("x-tada-extension") is None
    for name in ("seed", "negative_prompt", "aspect_ratio", "variation_of"):
        assert body[name]["x-tada-extension"] is True, name
        assert body[name]["description"].startswith("Engine extension"), name
    assert schemas["GenerateLoraRequest"]["required"] == ["prompt"]
    answer = schemas["LoraGeneration"]["properties"]
    assert answer["variation_of"]["x-tada-extension"] is True
