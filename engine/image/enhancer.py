"""The prompt enhancer: a member's short prompt becomes a detailed one (plus a negative).

Default: :class:`TemplateEnhancer`, deterministic for a given prompt and seed. When an
OpenAI-compatible chat endpoint is configured, :class:`ChatEnhancer` asks it and falls
back to the template on any failure. Either way the trigger word survives, because a LoRA
without its trigger word draws the base model's idea of the prompt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import httpx

from engine.image.settings import EnhancerSettings

log = logging.getLogger(__name__)

SUBJECT_TERMS = (
    "highly detailed",
    "intricate details",
    "expressive features",
    "fine textures",
    "crisp clean linework",
    "rich colors",
)
LIGHTING_TERMS = (
    "soft studio lighting",
    "golden hour light",
    "cinematic lighting",
    "gentle rim light",
    "diffuse natural light",
    "dramatic side lighting",
)
COMPOSITION_TERMS = (
    "centered composition",
    "rule of thirds",
    "shallow depth of field",
    "three-quarter view",
    "dynamic angle",
    "clean uncluttered background",
)
QUALITY_TERMS = ("masterpiece", "best quality", "high resolution", "sharp focus", "professional")
NEGATIVE_PROMPT = (
    "lowres, blurry, jpeg artifacts, deformed, bad anatomy, extra limbs, duplicate, "
    "watermark, text, signature, cropped, worst quality, nsfw, nudity"
)
# Words and phrases that ask for explicit images; a prompt holding one is refused before
# any work (``[engine.image.enhancer] refuse_explicit``), and a chat endpoint's answer
# holding one is replaced by the template's. Unambiguous terms only, matched as whole
# words (and plurals): "bare tree" or "Sussex" are fine.
EXPLICIT_TERMS: tuple[str, ...] = (
    "nsfw",
    "porn",
    "porno",
    "pornographic",
    "hentai",
    "xxx",
    "nude",
    "nudes",
    "naked",
    "nudity",
    "topless",
    "bottomless",
    "undressed",
    "unclothed",
    "nipple",
    "bare breasts",
    "boobs",
    "genitals",
    "genitalia",
    "penis",
    "vagina",
    "erotic",
    "erotica",
    "having sex",
    "sex scene",
    "sexual intercourse",
    "blowjob",
    "cumshot",
)
_EXPLICIT = re.compile(
    r"(?<![\w-])(?:"
    + "|".join(r"\s+".join(map(re.escape, t.split())) for t in EXPLICIT_TERMS)
    + r")s?(?![\w-])",
    re.IGNORECASE,
)
SYSTEM_PROMPT = (
    "You rewrite short image prompts for a Stable Diffusion model. Keep the subject and "
    "every word the user wrote, keep the trigger word exactly as given, and add concrete "
    "subject detail, lighting, composition and quality terms. Answer with the prompt only, "
    "one line, comma-separated, at most {max_words} words."
)


def explicit_term(text: str) -> str | None:
    """The first term in ``text`` that asks for an explicit image, or ``None``."""
    found = _EXPLICIT.search(" ".join(text.split()))
    return found.group(0).lower() if found else None


class EnhancerSource(StrEnum):
    """Which enhancer wrote a prompt."""

    TEMPLATE = "template"  # the deterministic template
    LLM = "llm"  # the configured chat endpoint
    FALLBACK = "template-fallback"  # the template, because the chat endpoint failed


@dataclass(frozen=True)
class EnhancedPrompt:
    """The prompt the model gets, its negative prompt, and who wrote it."""

    prompt: str
    negative_prompt: str
    source: EnhancerSource


class PromptEnhancer(Protocol):
    """Anything that turns a member's prompt into an :class:`EnhancedPrompt`."""

    def enhance(self, prompt: str, trigger_word: str | None, seed: int) -> EnhancedPrompt: ...


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().strip(",").strip()


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text, re.IGNORECASE) is not None


def with_trigger(prompt: str, trigger_word: str | None) -> str:
    """``prompt`` with the trigger word in front unless it is already there."""
    if not trigger_word or _has_word(prompt, trigger_word):
        return prompt
    return f"{trigger_word}, {prompt}" if prompt else trigger_word


class TemplateEnhancer:
    """Deterministic enhancement: the same prompt and seed always give the same text."""

    def __init__(self, max_words: int = 60) -> None:
        self.max_words = max_words

    def enhance(self, prompt: str, trigger_word: str | None, seed: int) -> EnhancedPrompt:
        base = with_trigger(_clean(prompt), trigger_word)
        digest = hashlib.sha256(f"{seed}:{base}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        picks = [
            rng.choice(SUBJECT_TERMS),
            rng.choice(LIGHTING_TERMS),
            rng.choice(COMPOSITION_TERMS),
            *rng.sample(QUALITY_TERMS, 2),
        ]
        seen = {t.strip().lower() for t in base.split(",") if t.strip()}
        lowered = base.lower()
        added: list[str] = []
        words = len(base.split())
        for term in picks:
            key = term.lower()
            if key in seen or key in lowered:
                continue
            if words + len(term.split()) > max(self.max_words, len(base.split())):
                break
            seen.add(key)
            added.append(term)
            words += len(term.split())
        text = ", ".join([base, *added]) if base else ", ".join(added)
        return EnhancedPrompt(text, NEGATIVE_PROMPT, EnhancerSource.TEMPLATE)


class ChatEnhancer:
    """An OpenAI-compatible ``/chat/completions`` endpoint, with the template as fallback."""

    def __init__(
        self,
        settings: EnhancerSettings,
        *,
        client: httpx.Client | None = None,
        fallback: TemplateEnhancer | None = None,
    ) -> None:
        if not settings.base_url or not settings.model:
            raise ValueError("ChatEnhancer needs base_url and model")
        self.settings = settings
        self.client = client or httpx.Client(timeout=settings.timeout_seconds)
        self.fallback = fallback or TemplateEnhancer(settings.max_words)

    def _ask(self, prompt: str, trigger_word: str | None, seed: int) -> str:
        headers = {}
        key = os.environ.get(self.settings.api_key_env) if self.settings.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        user = f"Trigger word: {trigger_word}\nPrompt: {prompt}" if trigger_word else prompt
        resp = self.client.post(
            f"{str(self.settings.base_url).rstrip('/')}/chat/completions",
            headers=headers,
            timeout=self.settings.timeout_seconds,
            json={
                "model": self.settings.model,
                "temperature": 0,
                "seed": seed,
                "messages": [
                    {
                        "role": "system",
                        "content": SYSTEM_PROMPT.format(max_words=self.settings.max_words),
                    },
                    {"role": "user", "content": user},
                ],
            },
        )
        resp.raise_for_status()
        content = resp.json()["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise ValueError("the answer has no text content")
        text = _clean(content.strip().strip('"').splitlines()[0] if content.strip() else "")
        if not text or len(text) > 2000:
            raise ValueError("empty or overlong answer")
        return text

    def enhance(self, prompt: str, trigger_word: str | None, seed: int) -> EnhancedPrompt:
        try:
            text = self._ask(_clean(prompt), trigger_word, seed)
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            log.warning("prompt enhancer endpoint failed (%s); using the template", exc)
            fallback = self.fallback.enhance(prompt, trigger_word, seed)
            return EnhancedPrompt(
                fallback.prompt, fallback.negative_prompt, EnhancerSource.FALLBACK
            )
        if explicit_term(text) is not None and explicit_term(prompt) is None:
            # The endpoint made an ordinary prompt explicit: not drawn; the template instead.
            log.warning("prompt enhancer endpoint added explicit terms; using the template")
            fallback = self.fallback.enhance(prompt, trigger_word, seed)
            return EnhancedPrompt(
                fallback.prompt, fallback.negative_prompt, EnhancerSource.FALLBACK
            )
        return EnhancedPrompt(with_trigger(text, trigger_word), NEGATIVE_PROMPT, EnhancerSource.LLM)


def build_enhancer(settings: EnhancerSettings) -> PromptEnhancer:
    """The enhancer named by ``[engine.image.enhancer]``."""
    if settings.backend == "openai":
        return ChatEnhancer(settings)
    return TemplateEnhancer(settings.max_words)
