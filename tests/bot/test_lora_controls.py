"""The image controls members expect (issue 19), in SimCord against the real engine: seed,
aspect ratio and negative prompt options, the seed and parameters on the post, Variations
linked to their parent, "Use seed", across a restart, within the server's quota, and an
API that offers none of it (the hosted contract: ``prompt`` only)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import simcord
from fastapi import FastAPI
from pydantic import SecretStr

from bot.app import BotServices, create_bot, open_services
from bot.config import BotConfig
from bot.jobs.images import ASPECT_RATIOS
from bot.store import LinkedVia
from engine.image.types import ASPECT_RATIOS as ENGINE_RATIOS
from engine.settings import EngineSettings, JobSettings
from tests.bot.conftest import ENGINE_URL
from tests.bot.media_samples import picture, zip_of
from tests.bot.policy_world import admin_says, make_server
from tests.bot.worker_world import bot_config  # noqa: F401
from tests.conftest import make_settings, register
from tests.waiting import CEILING_S, polls

pytestmark = pytest.mark.simcord(settle_timeout=120)
IMAGE = {
    "training": {"steps": 2, "rank": 4, "learning_rate": 1e-2, "batch_size": 2},
    "zip": {"min_side": 32},
    "generation": {"steps": 2},
}
GENERATIONS = "/generations"


@pytest.fixture
def engine_settings(tmp_path: Path) -> EngineSettings:  # worker_world's, with quick trainings
    return make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image=IMAGE,
    )


def sent_bodies(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    """The JSON bodies of every LoRA generation the bot asks for from now on."""
    bodies: list[dict[str, Any]] = []

    async def note(request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path.endswith(GENERATIONS):
            bodies.append(json.loads(request.content))

    api.event_hooks["request"].append(note)
    return bodies


async def trained_lora(api: httpx.AsyncClient, key: str, name: str = "Cats") -> str:
    """A LoRA trained on the engine (through its API, the quick way); its id."""
    headers = {"X-API-Key": key}
    target = (
        await api.post(
            "/api/loras/uploads/url",
            params={"name": name, "trigger_word": "tadz", "file_name": "set.zip"},
            headers=headers,
        )
    ).json()
    url = httpx.URL(target["upload_url"])
    data = zip_of({f"img{i}.jpg": picture(i) for i in range(4)})
    put = await api.put(url.raw_path.decode(), content=data, headers=target["headers"])
    assert put.status_code == 200, put.text
    upload_id = str(target["id"])
    started = await api.post(f"/api/loras/trainings/{upload_id}", headers=headers)
    assert started.status_code == 202, started.text
    for _ in polls():
        status = (await api.get(f"/api/loras/trainings/{upload_id}", headers=headers)).json()
        if status["status"] in ("succeeded", "failed", "canceled"):
            break
        await asyncio.sleep(0.05)
    assert status["status"] == "succeeded", status
    return upload_id


async def member_with_lora(
    env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> tuple[simcord.ChannelHandle, simcord.MemberActor, str, str]:
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))
    key = await register(api, "alice@example.com")
    await services.members.save(alice.id, SecretStr(key), via=LinkedVia.LINK)
    return channel, alice, key, await trained_lora(api, key)


async def generation(api: httpx.AsyncClient, key: str, generation_id: str) -> dict[str, Any]:
    resp = await api.get(f"/api/loras/generations/{generation_id}", headers={"X-API-Key": key})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def fields_of(message: Any) -> dict[str, str]:
    return {f.name: f.value for f in message.embeds[0].fields}


def labels_of(message: Any) -> list[str]:
    return [c.get("label") for row in message.components for c in row["components"]]


def said(result: Any) -> list[str]:
    """Everything the bot answered to one interaction."""
    return [m.content for m in [result.response, *result.followups] if m is not None]


def job_of(env: simcord.Env):  # type: ignore[no-untyped-def]
    return env.bot.jobs.store  # type: ignore[attr-defined]


def test_the_aspect_ratio_choices_are_the_engines() -> None:
    assert ASPECT_RATIOS == ENGINE_RATIOS


async def test_seed_aspect_ratio_and_negative_prompt_reach_the_engine_and_show_on_the_post(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice, key, lora = await member_with_lora(simcord_env, services, api)
    bodies = sent_bodies(api)
    documents: list[str] = []

    async def note(request: httpx.Request) -> None:
        if request.url.path == "/openapi.json":
            documents.append(request.url.path)

    api.event_hooks["request"].append(note)

    made = await alice.slash(
        channel,
        "lora generate",
        lora=lora,
        prompt="a cat",
        seed=42,
        aspect_ratio="16:9",
        negative_prompt="dogs",
    )

    assert bodies == [
        {"prompt": "a cat", "seed": 42, "aspect_ratio": "16:9", "negative_prompt": "dogs"}
    ]
    post = made.followups[-1]
    # Named by the LoRA's name, not its id; the seed and the parameters under it.
    assert post.embeds[0].title == "🎨 Cats"
    [job] = await job_of(simcord_env).for_member(alice.id)
    drawn = await generation(api, key, str(job.tada_id))
    assert drawn["seed"] == 42 and drawn["width"] > drawn["height"]
    assert fields_of(post) == {
        "Enhanced prompt": drawn["enhanced_prompt"],
        "Seed": "`42`",
        "Size": f"{drawn['width']}×{drawn['height']} (16:9)",
        "Negative prompt": "dogs",
    }
    assert labels_of(post) == [
        "Re-roll",
        "Variations",
        "Upscale 2x",
        "Vary (subtle)",
        "Vary (strong)",
        "Use seed",
        "Delete",
    ]
    # No note about unsupported options: this API takes them all.
    assert not any("does not support" in m.content for m in made.followups)

    # Re-roll draws a new image: the same request, the seed left to the engine.
    await alice.click(post, label="Re-roll")
    assert bodies[-1] == {"prompt": "a cat", "aspect_ratio": "16:9", "negative_prompt": "dogs"}
    # The API's document was read once for both (cached per base URL).
    assert documents == ["/openapi.json"]
    _ = simcord_env.errors


async def test_variations_and_the_seed_survive_a_restart_and_link_to_their_parent(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice, key, lora = await member_with_lora(simcord_env, services, api)
    made = await alice.slash(channel, "lora generate", lora=lora, prompt="a cat", seed=7)
    parent = made.followups[-1]
    parent_id = (await job_of(simcord_env).for_member(alice.id))[0].tada_id

    # A new bot process: the buttons of the old post still work.
    await simcord_env.restart_bot(create_bot(services))
    bodies = sent_bodies(api)
    varied = await alice.click(parent, label="Variations")

    assert bodies == [{"prompt": "a cat", "variation_of": parent_id}]
    child = varied.followups[-1]
    jump = f"https://discord.com/channels/{simcord_env.guild.id}/{channel.id}/{parent.id}"
    assert jump in child.content
    assert child.embeds[0].title == "🎨 Cats"
    newest = max(await job_of(simcord_env).for_member(alice.id), key=lambda j: j.created_at)
    drawn = await generation(api, key, str(newest.tada_id))
    assert drawn["variation_of"] == parent_id and drawn["seed"] != 7
    assert fields_of(child)["Seed"] == f"`{drawn['seed']}`"

    # Someone else can read the seed, but neither vary alice's image nor redraw it.
    bob = simcord_env.guild.add_member(simcord_env.create_user("bob"))
    refused = await bob.click(parent, label="Variations")
    assert refused.ephemeral and len(bodies) == 1
    assert f"This button belongs to <@{alice.id}>" in " ".join(said(refused))
    seen = await bob.click(parent, label="Use seed")
    assert seen.ephemeral and seen.response is not None
    assert "Seed `7`" in seen.response.content and "LoRA: **Cats**" in seen.response.content
    assert "Draw with this seed" not in labels_of(seen.response)

    # Its owner gets the seed privately with a button that keeps it for a new prompt.
    shown = await alice.click(parent, label="Use seed")
    assert shown.ephemeral and shown.response is not None
    assert "`seed:7`" in shown.response.content
    await simcord_env.restart_bot(create_bot(services))
    form = await alice.click(shown.response, label="Draw with this seed")
    assert form.modal is not None
    filled = {
        c["custom_id"]: c.get("value")
        for row in form.modal["components"]
        for c in row["components"]
    }
    assert filled["prompt"] == "a cat" and filled["seed"] == "7"
    redrawn = await alice.submit_modal(
        form, {"prompt": "a cat in a hat", "seed": "7", "aspect_ratio": "2:3"}
    )
    assert bodies[-1] == {"prompt": "a cat in a hat", "seed": 7, "aspect_ratio": "2:3"}
    assert fields_of(redrawn.followups[-1])["Seed"] == "`7`"

    form = await alice.click(shown.response, label="Draw with this seed")
    bad = await alice.submit_modal(form, {"prompt": "a cat", "seed": "-3"})
    assert bad.ephemeral
    assert "The seed must be a whole number from 0 to 2147483647." in said(bad)
    _ = simcord_env.errors


async def test_the_buttons_are_counted_against_the_servers_quota(
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
    bodies = sent_bodies(api)

    refused = await server.alice.click(post, label="Variations")
    shown = await server.alice.click(post, label="Use seed")
    assert shown.response is not None
    form = await server.alice.click(shown.response, label="Draw with this seed")
    again = await server.alice.submit_modal(form, {"prompt": "a dog"})

    assert bodies == []  # the engine was never asked
    for answer in (refused, again):
        assert answer.ephemeral
        assert any("used all your LoRA allowance" in t for t in said(answer)), said(answer)
    _ = simcord_env.errors


class HostedDocument(httpx.AsyncBaseTransport):
    """The engine behind an OpenAPI document of the hosted contract (``prompt`` only), or
    behind no document at all (``None``)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, document: dict[str, Any] | None):
        self.inner = inner
        self.document = document

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/openapi.json":
            if self.document is None:
                return httpx.Response(404, json={"detail": "Not Found"})
            return httpx.Response(200, json=self.document)
        return await self.inner.handle_async_request(request)


def hosted_document() -> dict[str, Any]:
    schema = {"properties": {"prompt": {"type": "string"}}, "required": ["prompt"]}
    body = {"content": {"application/json": {"schema": schema}}}
    return {"paths": {"/api/loras/{lora_id}/generations": {"post": {"requestBody": body}}}}


@asynccontextmanager
async def hosted_services(
    config: BotConfig, app: FastAPI, document: dict[str, Any] | None
) -> AsyncIterator[tuple[BotServices, list[dict[str, Any]]]]:
    """Bot services that see the engine as the hosted API, and the generation bodies sent."""
    bodies: list[dict[str, Any]] = []

    async def note(request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path.endswith(GENERATIONS):
            bodies.append(json.loads(request.content))

    transport = HostedDocument(httpx.ASGITransport(app=app), document)
    async with (
        httpx.AsyncClient(
            transport=transport, base_url=ENGINE_URL, event_hooks={"request": [note]}
        ) as http,
        open_services(config, http=http, base_url=ENGINE_URL) as built,
    ):
        yield built, bodies


@pytest.mark.parametrize("document", [hosted_document(), None], ids=["hosted", "no-document"])
async def test_against_the_hosted_contract_only_the_prompt_is_sent(
    simcord_env: simcord.Env,
    services: BotServices,
    engine: tuple[FastAPI, httpx.AsyncClient],
    document: dict[str, Any] | None,
) -> None:
    app, api = engine
    async with hosted_services(services.config, app, document) as (hosted, bodies):
        await simcord_env.restart_bot(create_bot(hosted))
        channel, alice, _, lora = await member_with_lora(simcord_env, hosted, api)

        made = await alice.slash(
            channel, "lora generate", lora=lora, prompt="a cat", seed=42, aspect_ratio="16:9"
        )

        assert bodies == [{"prompt": "a cat"}]
        post = next(m for m in made.followups if m.attachments)
        assert post.embeds[0].title == "🎨 Cats"
        [note] = [m for m in made.followups if "does not support" in m.content]
        assert note.ephemeral and "seed, aspect ratio" in note.content
        # Nothing on the post that this API cannot do.
        assert "Variations" not in labels_of(post)
        assert not {"Upscale 2x", "Vary (subtle)", "Vary (strong)"} & set(labels_of(post))
        assert labels_of(post)[0] == "Re-roll"
        await simcord_env.restart_bot(create_bot(hosted))  # before its services close
    _ = simcord_env.errors
