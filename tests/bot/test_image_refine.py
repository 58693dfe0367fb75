"""Upscale 2x and Vary (subtle / strong) buttons on a posted image (issue 29), in SimCord
against the real engine: owner only like Re-roll, through the same gate, quota and queue,
every result classified before it is posted, linked to the post it came from."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import simcord
from fastapi import FastAPI
from PIL import Image
from pydantic import SecretStr

from bot.app import BotServices, open_services
from bot.config import BotConfig
from bot.safety import ImageSafety
from bot.store import LinkedVia
from engine.settings import EngineSettings, JobSettings
from tests.bot.conftest import ENGINE_URL
from tests.bot.policy_world import admin_says, demo_loras, make_server
from tests.bot.safety_world import ScriptedClassifier
from tests.bot.test_lora_controls import (
    IMAGE,
    generation,
    job_of,
    labels_of,
    said,
    trained_lora,
)
from tests.bot.worker_world import bot_config  # noqa: F401
from tests.conftest import make_settings, register
from tests.waiting import CEILING_S

pytestmark = pytest.mark.simcord(settle_timeout=120)
IMAGE_OPS = "/api/images/"


__all__ = ["demo_loras"]  # the module-scoped fixture, used through engine_settings


@pytest.fixture
def engine_settings(tmp_path: Path, demo_loras: dict[str, Path]) -> EngineSettings:
    """Quick trainings (as lora_controls'), and the Tadz demo."""
    demos = {"tadz": {"lora_path": str(demo_loras["tadz"]), "trigger_word": "tadz"}}
    return make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image={**IMAGE, "demos": demos},
    )


@pytest.fixture
def classifier() -> ScriptedClassifier:
    classifier = ScriptedClassifier()
    classifier.explicit = False
    return classifier


@pytest.fixture
async def services(
    bot_config: BotConfig,  # noqa: F811
    engine: tuple[FastAPI, httpx.AsyncClient],
    classifier: ScriptedClassifier,
) -> AsyncIterator[BotServices]:
    """The composition root with the scripted image classifier (it counts what it sees)."""
    safety = ImageSafety(classifier)
    async with open_services(bot_config, http=engine[1], base_url=ENGINE_URL, safety=safety) as s:
        yield s


def image_calls(api: httpx.AsyncClient) -> list[tuple[str, Any]]:
    """Every upscale / vary the bot asks the engine for from now on: (path, JSON body)."""
    calls: list[tuple[str, Any]] = []

    async def note(request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path.startswith(IMAGE_OPS):
            body = json.loads(request.content) if request.content else None
            calls.append((request.url.path, body))

    api.event_hooks["request"].append(note)
    return calls


async def size_of(message: Any) -> tuple[int, int]:
    [attachment] = message.attachments
    with Image.open(io.BytesIO(await attachment.read())) as decoded:
        return decoded.size


async def test_upscale_and_vary_are_the_owners_and_link_to_their_parent(
    simcord_env: simcord.Env,
    services: BotServices,
    api: httpx.AsyncClient,
    classifier: ScriptedClassifier,
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    key = await register(api, "alice@example.com")
    await services.members.save(alice.id, SecretStr(key), via=LinkedVia.LINK)
    lora = await trained_lora(api, key)
    made = await alice.slash(channel, "lora generate", lora=lora, prompt="a cat")
    parent = made.followups[-1]
    parent_id = (await job_of(simcord_env).for_member(alice.id))[0].tada_id
    assert labels_of(parent) == [
        "Re-roll",
        "Variations",
        "Upscale 2x",
        "Vary (subtle)",
        "Vary (strong)",
        "Use seed",
        "Delete",
    ]
    assert await size_of(parent) == (32, 32)
    calls = image_calls(api)
    jump = f"https://discord.com/channels/{guild.id}/{channel.id}/{parent.id}"

    # Someone else's click is refused privately, before anything is asked of the engine.
    bob = guild.add_member(simcord_env.create_user("bob"))
    for label in ("Upscale 2x", "Vary (subtle)", "Vary (strong)"):
        refused = await bob.click(parent, label=label)
        assert refused.ephemeral, label
        assert f"This button belongs to <@{alice.id}>" in " ".join(said(refused)), label
    assert calls == []
    seen = classifier.seen

    upscaled = await alice.click(parent, label="Upscale 2x")

    assert calls == [(f"/api/images/{parent_id}/upscale", None)]
    post = upscaled.followups[-1]
    assert not post.ephemeral and f"↪️ Upscaled 2x from {jump}" in post.content
    assert await size_of(post) == (64, 64)
    assert post.embeds[0].title == "🎨 Cats"
    assert classifier.seen == seen + 1  # classified before it was posted
    newest = max(await job_of(simcord_env).for_member(alice.id), key=lambda j: j.created_at)
    drawn = await generation(api, key, str(newest.tada_id))
    assert drawn["parent_id"] == parent_id and drawn["operation"] == "upscale"
    # The upscale's own post offers the same buttons (an upscale of an upscale, a variation).
    assert "Upscale 2x" in labels_of(post) and "Vary (strong)" in labels_of(post)
    # Its Re-roll upscales the same image again (a new seed).
    rerolled = await alice.click(post, label="Re-roll")
    assert calls[-1] == (f"/api/images/{parent_id}/upscale", None)
    assert f"↪️ Upscaled 2x from {jump}" in rerolled.followups[-1].content

    for label, strength in (("Vary (subtle)", "subtle"), ("Vary (strong)", "strong")):
        varied = await alice.click(parent, label=label)
        assert calls[-1] == (f"/api/images/{parent_id}/vary", {"strength": strength})
        post = varied.followups[-1]
        assert f"↪️ {strength.title()} variation of {jump}" in post.content
        assert await size_of(post) == (32, 32)
    assert classifier.seen == seen + 4

    # A variation judged explicit is withheld like any image: nothing in the channel.
    classifier.explicit = True
    before = len(channel.history())
    withheld = await alice.click(parent, label="Vary (strong)")
    assert len(channel.history()) == before
    assert not any(m.attachments for m in withheld.followups)
    assert any("judged explicit" in m.content for m in withheld.followups if m.ephemeral)
    _ = simcord_env.errors


async def test_the_buttons_use_the_servers_quota(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    server = make_server(simcord_env)
    key = await register(api, "alice@example.com")
    await services.members.save(server.alice.id, SecretStr(key), via=LinkedVia.LINK)
    lora = await trained_lora(api, key)
    await admin_says(
        server,
        "quota set",
        role=server.guild.default_role,
        feature="lora",
        limit="images_per_day",
        amount=1,
    )
    made = await server.alice.slash(server.general, "lora generate", lora=lora, prompt="a cat")
    post = made.followups[-1]
    calls = image_calls(api)

    answers = [
        await server.alice.click(post, label=label)
        for label in ("Upscale 2x", "Vary (subtle)", "Vary (strong)")
    ]

    assert calls == []  # the engine was never asked
    for answer in answers:
        assert answer.ephemeral
        assert any("used all your LoRA allowance" in t for t in said(answer)), said(answer)
    _ = simcord_env.errors


async def test_a_demo_image_is_upscaled_and_varied_too(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    server = make_server(simcord_env)
    key = await register(api, "alice@example.com")
    await services.members.save(server.alice.id, SecretStr(key), via=LinkedVia.LINK)
    made = await server.alice.slash(server.general, "demo tadz", prompt="a cat")
    parent = made.followups[-1]
    # A demo has no seed or variation controls, but its image can be upscaled and varied.
    assert labels_of(parent) == [
        "Re-roll",
        "Upscale 2x",
        "Vary (subtle)",
        "Vary (strong)",
        "Delete",
    ]
    parent_id = (await job_of(simcord_env).for_member(server.alice.id))[0].tada_id
    calls = image_calls(api)
    jump = f"https://discord.com/channels/{server.guild.id}/{server.general.id}/{parent.id}"

    refused = await server.admin.click(parent, label="Upscale 2x")
    assert refused.ephemeral and calls == []
    upscaled = await server.alice.click(parent, label="Upscale 2x")

    assert calls == [(f"/api/images/{parent_id}/upscale", None)]
    post = upscaled.followups[-1]
    assert f"↪️ Upscaled 2x from {jump}" in post.content
    assert post.embeds[0].title == "Tadz demo"
    assert await size_of(post) == (64, 64)
    _ = simcord_env.errors
