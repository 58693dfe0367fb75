"""The image controls as job parameters: what is sent to which API, what a re-roll and a
variation ask for (bot/jobs/images.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from bot.errors import UserFacingError
from bot.jobs.images import (
    ImageOptions,
    generation_body,
    parse_ratio,
    parse_seed,
    variation_request,
    with_new_seed,
)
from bot.jobs.models import Job, JobKind, JobRequest, JobState
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
