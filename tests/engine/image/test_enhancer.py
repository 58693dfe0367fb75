"""The prompt enhancer: deterministic template, chat endpoint, fallback, trigger word kept."""

from __future__ import annotations

import json

import httpx
import pytest

from engine.image.enhancer import (
    NEGATIVE_PROMPT,
    ChatEnhancer,
    EnhancerSource,
    TemplateEnhancer,
    explicit_term,
    with_trigger,
)
from engine.image.settings import EnhancerSettings

pytestmark = pytest.mark.no_database


def test_template_is_deterministic_per_seed_and_adds_detail() -> None:
    enhancer = TemplateEnhancer()
    a = enhancer.enhance("a cat on a skateboard", "tadz", seed=7)
    assert a == enhancer.enhance("a cat on a skateboard", "tadz", seed=7)
    assert a.source is EnhancerSource.TEMPLATE
    assert a.prompt.startswith("tadz, a cat on a skateboard, ")
    assert len(a.prompt.split(", ")) >= 5
    assert a.negative_prompt == NEGATIVE_PROMPT
    seeds = {enhancer.enhance("a cat on a skateboard", "tadz", seed=s).prompt for s in range(20)}
    assert len(seeds) > 1


@pytest.mark.parametrize(
    ("prompt", "trigger"),
    [
        ("a dog", "tadz"),
        ("TADZ surfing", "tadz"),
        ("portrait of my_style-2 v, smiling", "my_style-2 v"),
        ("tadzilla in a city", "tadz"),
    ],
)
def test_the_trigger_word_survives_enhancement(prompt: str, trigger: str) -> None:
    out = TemplateEnhancer().enhance(prompt, trigger, seed=1).prompt
    assert with_trigger(out, trigger) == out
    assert out.lower().count(trigger.lower()) >= 1
    if "tadzilla" in prompt:  # a longer word containing it is not the trigger word
        assert out.startswith("tadz, ")


def test_template_dedupes_terms_the_prompt_already_has() -> None:
    enhancer = TemplateEnhancer()
    for seed in range(30):
        out = enhancer.enhance("tadz, Masterpiece, best quality, sharp focus", "tadz", seed).prompt
        terms = [t.strip().lower() for t in out.split(",")]
        assert len(terms) == len(set(terms)), out


def test_template_respects_the_word_budget_but_keeps_the_prompt() -> None:
    long = " ".join(["word"] * 80)
    out = TemplateEnhancer(max_words=60).enhance(long, "tadz", seed=3).prompt
    assert out == f"tadz, {long}"


def _chat(handler) -> ChatEnhancer:
    settings = EnhancerSettings(
        backend="openai", base_url="http://llm.test/v1", model="m", timeout_seconds=1
    )
    return ChatEnhancer(settings, client=httpx.Client(transport=httpx.MockTransport(handler)))


def test_chat_endpoint_answer_is_used_and_the_trigger_word_restored() -> None:
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        assert request.url == "http://llm.test/v1/chat/completions"
        text = '"a fluffy cat riding a skateboard, sunset light, wide shot"'
        return httpx.Response(200, json={"choices": [{"message": {"content": text}}]})

    out = _chat(handler).enhance("a cat on a skateboard", "tadz", seed=5)
    assert out.source is EnhancerSource.LLM
    assert out.prompt == "tadz, a fluffy cat riding a skateboard, sunset light, wide shot"
    assert seen[0]["model"] == "m" and seen[0]["seed"] == 5
    assert "tadz" in seen[0]["messages"][1]["content"]


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(500, text="boom"),
        httpx.Response(200, text="not json"),
        httpx.Response(200, json={"choices": []}),
        httpx.Response(200, json={"choices": [{"message": {"content": "   "}}]}),
        None,
    ],
)
def test_chat_failures_fall_back_to_the_template(response: httpx.Response | None) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if response is None:
            raise httpx.ConnectTimeout("no answer", request=request)
        return response

    out = _chat(handler).enhance("a cat", "tadz", seed=2)
    assert out.source is EnhancerSource.FALLBACK
    assert out.prompt == TemplateEnhancer().enhance("a cat", "tadz", seed=2).prompt


def test_openai_backend_needs_an_endpoint() -> None:
    with pytest.raises(ValueError, match="base_url and model"):
        EnhancerSettings(backend="openai")


def test_prompts_asking_for_explicit_images_are_recognised() -> None:
    for prompt, term in [
        ("a NUDE portrait", "nude"),
        ("two  naked   people", "naked"),
        ("the couple having   sex", "having sex"),
        ("close-up of nipples", "nipples"),
        ("an erotic photo", "erotic"),
    ]:
        assert explicit_term(prompt) == term, prompt
    for prompt in ["a bare tree in Sussex", "a denuded hillside", "a nudeish-pink wall", "a cat"]:
        assert explicit_term(prompt) is None, prompt
    # The default negative prompt steers away from it as well.
    assert explicit_term(NEGATIVE_PROMPT) == "nsfw"


def test_a_chat_endpoint_that_makes_a_prompt_explicit_is_not_used() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        text = "a cat on a skateboard, topless woman watching"
        return httpx.Response(200, json={"choices": [{"message": {"content": text}}]})

    out = _chat(handler).enhance("a cat on a skateboard", "tadz", seed=5)
    assert out.source is EnhancerSource.FALLBACK
    assert explicit_term(out.prompt) is None
