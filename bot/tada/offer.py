"""What the Ta-da API the bot talks to offers beyond the hosted contract, read from its
OpenAPI document.

The hosted API's LoRA generation body carries only ``prompt``; our engine documents
optional extensions (``seed``, ``negative_prompt``, ``aspect_ratio``, ``variation_of``) in
the same request schema, and the image operations (upscale, vary) as paths of their own.
The bot sends an extension only to an API whose document lists it, so the same bot works
against both. A document that cannot be fetched or read means
the hosted contract: nothing beyond ``prompt``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

# The LoRA generation operation: the latest revision's path first, then the seed's.
GENERATION_PATHS = ("/api/loras/{lora_id}/generations", "/api/loras/generations/{upload_id}")
# The image operations (engine extensions): img2img from a generated image.
UPSCALE_PATH = "/api/images/{image_id}/upscale"
VARY_PATH = "/api/images/{image_id}/vary"
# The engine's speech stream extension (``POST``: a WAV sent while the speech is made).
SPEECH_STREAM_PATH = "/api/voices/{voice_id}/speech/stream"
# How long a fetched document is trusted, and how soon a failed fetch is tried again.
DEFAULT_TTL_SECONDS = 600.0
FAILURE_TTL_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class GenerationOffer:
    """The optional controls of a LoRA generation that an API accepts."""

    seed: bool = False
    negative_prompt: bool = False
    variation_of: bool = False
    # The accepted width:height ratios; ``("*",)`` when any string is accepted.
    aspect_ratios: tuple[str, ...] = ()
    # Upscale 2x and Vary (subtle / strong) of a generated image.
    upscale: bool = False
    vary_image: bool = False
    # Speech streamed while it is made (``/voice say`` starts playing at once).
    speech_stream: bool = False

    @property
    def aspect_ratio(self) -> bool:
        """Whether an aspect ratio may be sent at all."""
        return bool(self.aspect_ratios)

    @property
    def any(self) -> bool:
        """Whether anything beyond the hosted contract is offered."""
        return (
            self.seed
            or self.negative_prompt
            or self.variation_of
            or self.aspect_ratio
            or self.upscale
            or self.vary_image
        )

    def accepts_ratio(self, ratio: str) -> bool:
        """Whether ``ratio`` may be sent."""
        return ratio in self.aspect_ratios or self.aspect_ratios == ("*",)


# The hosted contract: the body is ``{"prompt": ...}`` and nothing else.
HOSTED_OFFER = GenerationOffer()


def _resolve(document: Mapping[str, Any], node: Any) -> Any:
    """``node`` with a local ``$ref`` followed (``None`` when it dangles)."""
    for _ in range(8):  # a ref to a ref is legal; a cycle is not followed forever
        if not isinstance(node, Mapping) or "$ref" not in node:
            return node
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return None
        target: Any = document
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        node = target
    return None


def _body_properties(document: Mapping[str, Any]) -> Mapping[str, Any]:
    paths = document.get("paths")
    if not isinstance(paths, Mapping):
        return {}
    for path in GENERATION_PATHS:
        operation = paths.get(path)
        post = operation.get("post") if isinstance(operation, Mapping) else None
        body = _resolve(document, post.get("requestBody")) if isinstance(post, Mapping) else None
        content = body.get("content") if isinstance(body, Mapping) else None
        media = content.get("application/json") if isinstance(content, Mapping) else None
        schema = _resolve(document, media.get("schema")) if isinstance(media, Mapping) else None
        props = schema.get("properties") if isinstance(schema, Mapping) else None
        if isinstance(props, Mapping):
            return props
    return {}


def _enum_of(document: Mapping[str, Any], schema: Any) -> tuple[str, ...]:
    """The string values a property accepts (``("*",)``: any string), through ``anyOf``."""
    schema = _resolve(document, schema)
    if not isinstance(schema, Mapping):
        return ()
    values: list[str] = []
    branches = schema.get("anyOf") or schema.get("oneOf") or [schema]
    for branch in branches if isinstance(branches, list) else []:
        branch = _resolve(document, branch)
        if not isinstance(branch, Mapping):
            continue
        enum = branch.get("enum")
        if isinstance(enum, list):
            values += [v for v in enum if isinstance(v, str)]
        elif branch.get("type") == "string":
            return ("*",)
    return tuple(values)


def _posts(document: Mapping[str, Any], path: str) -> bool:
    paths = document.get("paths")
    operation = paths.get(path) if isinstance(paths, Mapping) else None
    return isinstance(operation, Mapping) and isinstance(operation.get("post"), Mapping)


def offer_of(document: Any) -> GenerationOffer:
    """What the LoRA generation body of an OpenAPI ``document`` accepts beyond ``prompt``,
    whether it upscales and varies images, and whether it streams speech."""
    if not isinstance(document, Mapping):
        return HOSTED_OFFER
    props = _body_properties(document)
    return GenerationOffer(
        seed="seed" in props,
        negative_prompt="negative_prompt" in props,
        variation_of="variation_of" in props,
        aspect_ratios=_enum_of(document, props["aspect_ratio"]) if "aspect_ratio" in props else (),
        upscale=_posts(document, UPSCALE_PATH),
        vary_image=_posts(document, VARY_PATH),
        speech_stream=_posts(document, SPEECH_STREAM_PATH),
    )


class OfferCache:
    """Each API's offer (by base URL), fetched once and kept for ``ttl`` seconds; a failed
    fetch reads as the hosted contract and is tried again after ``failure_ttl``.

    One cache is shared by a client and all its per-member views, so a command never
    waits on the document more than once per TTL; concurrent askers wait on one fetch.
    """

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL_SECONDS,
        failure_ttl: float = FAILURE_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.failure_ttl = min(failure_ttl, ttl)
        self._clock = clock
        self._known: dict[str, tuple[float, GenerationOffer]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"<OfferCache {len(self._known)} API(s) ttl={self.ttl:g}s>"

    async def get(
        self, base_url: str, fetch: Callable[[], Awaitable[GenerationOffer | None]]
    ) -> GenerationOffer:
        """The offer of ``base_url``; ``fetch`` returns ``None`` when the document could not
        be had."""
        cached = self._fresh(base_url)
        if cached is not None:
            return cached
        async with self._locks.setdefault(base_url, asyncio.Lock()):
            cached = self._fresh(base_url)  # fetched while this one waited
            if cached is not None:
                return cached
            offer = await fetch()
            ttl = self.ttl if offer is not None else self.failure_ttl
            result = offer if offer is not None else HOSTED_OFFER
            self._known[base_url] = (self._clock() + ttl, result)
            return result

    def _fresh(self, base_url: str) -> GenerationOffer | None:
        known = self._known.get(base_url)
        if known is None or known[0] <= self._clock():
            return None
        return known[1]
