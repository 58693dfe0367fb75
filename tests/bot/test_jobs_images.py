"""The image controls as job parameters: what is sent to which API, what a re-roll and a
variation ask for (bot/jobs/images.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bot.errors import UserFacingError
from bot.jobs.images import (
    ImageOptions,
    generation_body,
    parent_lead,
    parse_ratio,
    parse_seed,
    refine_call,
    refine_request,
    refinement_of,
    variation_request,
    with_new_seed,
)
from bot.jobs.models import Job, JobKind, JobRequest, JobState
from bot.jobs.recover import find_generation
from bot.tada import TadaClient
from bot.tada.offer import HOSTED_OFFER, GenerationOffer

ENGINE = GenerationOffer(
    seed=True, negative_prompt=True, variation_of=True, aspect_ratios=("1:1", "16:9")
)
ASKED = ImageOptions(seed=5, negative_prompt="dogs", aspect_ratio="16:9")


def job(state: JobState = JobState.FINISHED, **params: Any) -> Job:
    return Job(
        id="a" * 32,
        user_id=1,
        guild_id=2,
        channel_id=3,
        kind=JobKind.LORA_GENERATE,
        state=state,
        params={"lora_id": "L", "prompt": "a cat", "lora_name": "Cats", **params},
        tada_id="G",
        result={"generation_id": "G", "prompt": "a cat", "seed": 5},
        error=None,
        private=False,
        has_shared_key=False,
        progress_message_id=None,
        result_message_id=9,
        posted_via=None,
        created_at=datetime.now(UTC),
        started_at=None,
    )


def test_what_an_api_lacks_is_named_and_left_out() -> None:
    assert ASKED.missing_from(ENGINE) == []
    assert ASKED.within(ENGINE) == ASKED
    assert ASKED.missing_from(HOSTED_OFFER) == ["seed", "negative prompt", "aspect ratio"]
    assert ASKED.within(HOSTED_OFFER).params() == {}
    only_square = GenerationOffer(seed=True, aspect_ratios=("1:1",))
    assert ASKED.missing_from(only_square) == ["negative prompt", "aspect ratio"]
    assert ASKED.within(only_square) == ImageOptions(seed=5)


def test_the_body_sent_depends_on_the_offer() -> None:
    params = {"prompt": "a cat", **ASKED.params()}
    assert generation_body(params, ENGINE) == ASKED.params()
    assert generation_body(params, HOSTED_OFFER) == {}
    varied = {"prompt": "a cat", "variation_of": "G", "aspect_ratio": "16:9"}
    # A variation takes its size from its parent; without variations it is a new image.
    assert generation_body(varied, ENGINE) == {"variation_of": "G"}
    assert generation_body(varied, HOSTED_OFFER) == {}


def test_a_variation_keeps_the_prompt_and_drops_the_seed() -> None:
    parent = job(seed=5, aspect_ratio="16:9")
    request = variation_request(parent, "https://discord.com/channels/2/3/9")
    assert request.kind is JobKind.LORA_GENERATE and request.text == "a cat"
    assert request.params == {
        "lora_id": "L",
        "lora_name": "Cats",
        "prompt": "a cat",
        "variation_of": "G",
        "parent_job": "a" * 32,
        "aspect_ratio": "16:9",
        "parent_url": "https://discord.com/channels/2/3/9",
    }
    with pytest.raises(UserFacingError):
        variation_request(job(JobState.FAILED), None)


def test_a_reroll_of_a_finished_image_leaves_the_seed_to_the_api() -> None:
    done, failed = job(seed=5), job(JobState.FAILED, seed=5)
    same = JobRequest(JobKind.LORA_GENERATE, dict(done.params), text="a cat")
    assert "seed" not in with_new_seed(done, same).params
    # A retry of a failed one asks exactly again.
    assert with_new_seed(failed, same).params["seed"] == 5


@pytest.mark.parametrize("text", ["-1", "1.5", "x", str(2**31)])
def test_a_bad_seed_is_refused_clearly(text: str) -> None:
    with pytest.raises(UserFacingError, match="whole number"):
        parse_seed(text)


def test_blank_fields_mean_defaults() -> None:
    assert parse_seed(" ") is None and parse_seed(" 42 ") == 42
    assert parse_ratio("") is None and parse_ratio(" 16 : 9 ") == "16:9"
    with pytest.raises(UserFacingError, match="aspect ratio"):
        parse_ratio("5:4")


REFINING = GenerationOffer(upscale=True, vary_image=True)


def test_an_upscale_or_vary_request_names_its_image_and_parent_post() -> None:
    parent = job(negative_prompt="dogs", seed=5)
    request = refine_request(parent, "vary_strong", "https://discord.com/channels/2/3/9")
    assert request.kind is JobKind.LORA_GENERATE and request.text == "a cat"
    assert request.params == {
        "lora_id": "L",
        "lora_name": "Cats",
        "prompt": "a cat",
        "refine": {"image_id": "G", "operation": "vary_strong"},
        "parent_job": "a" * 32,
        "negative_prompt": "dogs",
        "parent_url": "https://discord.com/channels/2/3/9",
    }
    assert refinement_of(request.params) == ("G", "vary_strong")
    assert refine_call(request.params, REFINING) == ("G", "strong")
    up = refine_request(parent, "upscale", None).params
    assert refine_call(up, REFINING) == ("G", None) and "parent_url" not in up
    assert (
        parent_lead(request.params) == " ↪️ Strong variation of https://discord.com/channels/2/3/9"
    )
    assert parent_lead({"parent_url": "u"}) == " ↪️ Variation of u"
    assert parent_lead(up) == "" and refinement_of(parent.params) is None
    with pytest.raises(UserFacingError):
        refine_request(job(JobState.FAILED), "upscale", None)
    with pytest.raises(ValueError):
        refine_request(parent, "sharpen", None)


@pytest.mark.parametrize(
    ("operation", "offer"),
    [
        ("upscale", HOSTED_OFFER),
        ("upscale", GenerationOffer(vary_image=True)),
        ("vary_subtle", GenerationOffer(upscale=True)),
    ],
)
def test_an_api_without_the_operation_is_a_clear_refusal(
    operation: str, offer: GenerationOffer
) -> None:
    params = refine_request(job(), operation, None).params
    with pytest.raises(UserFacingError, match="does not upscale or vary"):
        refine_call(params, offer)


class NothingClaimed:
    async def claimed(self, ids: set[str], *, besides: str) -> set[str]:
        return set()


async def test_a_lost_answer_is_found_by_its_parent_and_operation() -> None:
    """After a restart or a lost answer, an upscale is found in the listing as the image
    with its parent and operation, not its parent (same prompt) nor a plain image."""
    now = datetime.now(UTC).isoformat()
    listed = [
        {
            "id": "V",
            "prompt": "a cat",
            "created_at": now,
            "parent_id": "G",
            "operation": "vary_subtle",
        },
        {"id": "U", "prompt": "a cat", "created_at": now, "parent_id": "G", "operation": "upscale"},
        {"id": "P", "prompt": "a cat", "created_at": now},
    ]
    document = {
        "paths": {
            "/api/images/{image_id}/upscale": {"post": {}},
            "/api/images/{image_id}/vary": {"post": {}},
        }
    }

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/openapi.json"):
            return httpx.Response(200, json=document)
        return httpx.Response(200, json=listed)

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    tada = TadaClient(http, base_url="http://tada.test", api_key=SecretStr("k"))
    store: Any = NothingClaimed()
    base = job()
    running = dataclasses.replace(base, state=JobState.RUNNING, result=None)
    for operation, expected in (("upscale", "U"), ("vary_subtle", "V")):
        params = refine_request(base, operation, None).params
        found = await find_generation(tada, dataclasses.replace(running, params=params), store)
        assert found is not None and found["generation_id"] == expected
        assert found["parent_id"] == "G" and found["operation"] == operation
    plain = await find_generation(tada, running, store)
    assert plain is not None and plain["generation_id"] == "P"
    await http.aclose()
