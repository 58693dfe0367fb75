"""What the bot learns from the OpenAPI document of the API it talks to: which optional
generation controls (engine extensions) it offers, fetched once per base URL and cached."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from bot.tada import TadaClient
from bot.tada.offer import HOSTED_OFFER, GenerationOffer, offer_of
from engine.image.types import ASPECT_RATIOS


def hosted_document() -> dict[str, Any]:
    """The hosted API's LoRA generation operation as its OpenAPI files have it: a body of
    ``prompt`` only (the shape of tada-openapi-a67496a.json, trimmed)."""
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/G"}}}}
    return {
        "openapi": "3.1.0",
        "paths": {"/api/loras/{lora_id}/generations": {"post": {"requestBody": body}}},
        "components": {
            "schemas": {
                "G": {
                    "properties": {"prompt": {"type": "string"}},
                    "required": ["prompt"],
                    "type": "object",
                }
            }
        },
    }


async def test_the_engine_document_offers_every_extension(api: httpx.AsyncClient) -> None:
    document = (await api.get("/openapi.json")).json()
    offer = offer_of(document)
    assert offer == GenerationOffer(
        seed=True,
        negative_prompt=True,
        variation_of=True,
        aspect_ratios=ASPECT_RATIOS,
        upscale=True,
        vary_image=True,
        speech_stream=True,
    )
    assert offer.aspect_ratio


@pytest.mark.parametrize(
    "document",
    [
        hosted_document(),
        {},
        {"paths": "not a mapping"},
        {"paths": {"/api/loras/{lora_id}/generations": {"post": {"requestBody": {"$ref": "x"}}}}},
    ],
    ids=["hosted", "empty", "broken-paths", "dangling-ref"],
)
def test_a_document_without_the_extensions_is_the_hosted_contract(
    document: dict[str, Any],
) -> None:
    assert offer_of(document) == HOSTED_OFFER
    assert not HOSTED_OFFER.any


def test_the_seed_path_and_an_inline_schema_are_read_too() -> None:
    schema = {
        "properties": {
            "prompt": {"type": "string"},
            "seed": {"type": "integer"},
            "aspect_ratio": {"type": "string"},  # any ratio: no enum
        }
    }
    body = {"content": {"application/json": {"schema": schema}}}
    document = {"paths": {"/api/loras/generations/{upload_id}": {"post": {"requestBody": body}}}}
    offer = offer_of(document)
    assert offer.seed and offer.aspect_ratio and not offer.negative_prompt
    assert offer.accepts_ratio("16:9") and not offer.variation_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counting_transport(answers: list[httpx.Response]) -> tuple[httpx.MockTransport, list[str]]:
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        assert "X-API-Key" not in request.headers  # the document is public
        await asyncio.sleep(0)
        return answers[min(len(seen), len(answers)) - 1]

    return httpx.MockTransport(handler), seen


async def test_the_document_is_fetched_once_per_base_url_and_again_after_its_ttl() -> None:
    from pydantic import SecretStr

    engine_doc = json.dumps(
        {
            "paths": {
                "/api/loras/{lora_id}/generations": {
                    "post": {
                        "requestBody": {
                            "content": {
                                "application/json": {
                                    "schema": {"properties": {"seed": {"type": "integer"}}}
                                }
                            }
                        }
                    }
                }
            }
        }
    )
    transport, seen = counting_transport([httpx.Response(200, text=engine_doc)])
    clock = Clock()
    async with httpx.AsyncClient(transport=transport) as http:
        tada = TadaClient(http, base_url="http://engine.test/tadz", offer_ttl=600, clock=clock)
        member = tada.with_key(SecretStr("tada_k"))
        offers = await asyncio.gather(tada.generation_offer(), member.generation_offer())
        assert all(o.seed for o in offers)
        assert seen == ["http://engine.test/tadz/openapi.json"]
        clock.now += 599
        assert (await member.generation_offer()).seed
        assert len(seen) == 1
        clock.now += 2
        await tada.generation_offer()
        assert len(seen) == 2
        # Another API (another base URL) is asked on its own.
        other = TadaClient(http, base_url="http://other.test", offer_ttl=600, clock=clock)
        await other.generation_offer()
        assert seen[-1] == "http://other.test/openapi.json"


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(404, json={"detail": "Not Found"}),
        httpx.Response(503, text="down"),
        httpx.Response(200, text="<html>not json</html>"),
        httpx.Response(200, json=["not", "a", "document"]),
    ],
    ids=["404", "503", "html", "list"],
)
async def test_an_api_without_a_readable_document_is_taken_for_the_hosted_one(
    answer: httpx.Response,
) -> None:
    transport, seen = counting_transport([answer])
    clock = Clock()
    async with httpx.AsyncClient(transport=transport) as http:
        tada = TadaClient(
            http, base_url="http://engine.test", offer_ttl=600, clock=clock, sleep=_no_sleep
        )
        assert await tada.generation_offer() == HOSTED_OFFER
        asked = len(seen)
        # Not asked again at every command, but sooner than a good answer's TTL.
        assert await tada.generation_offer() == HOSTED_OFFER
        assert len(seen) == asked
        clock.now += 61
        await tada.generation_offer()
        assert len(seen) > asked


async def _no_sleep(_: float) -> None:
    return None
