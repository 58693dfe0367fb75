"""Faults between the bot and Ta-da, and between the bot and Discord; and bot restarts.

The bot (SimCord) talks to the real engine in-process through :class:`FaultyTransport`:
- reads are retried through 5xx, timeouts and refused connections, and the member sees
  the real answer; a read that keeps failing is explained to the member;
- a generation answered 5xx, or whose answer is lost to a timeout, is never sent twice
  (it is not idempotent) and the member gets a clear failure in the channel, once;
- the bot restarted while a generation is in flight: when the engine never got it, the
  member is told it was interrupted (with a Retry button); when the engine made it, the
  result is found and posted. Either way exactly once;
- Discord answering 429 while the result is posted: retried, posted once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import simcord
from fastapi import FastAPI
from pydantic import SecretStr

from bot.app import BotServices, create_bot, open_services
from bot.config import BotConfig
from bot.jobs import JobState
from bot.store import LinkedVia
from engine.settings import EngineSettings, JobSettings
from tests.bot.conftest import ENGINE_URL, make_bot_config
from tests.conftest import make_settings, register
from tests.engine.image.zips import good_zip
from tests.faults.faulty_transport import Fault, FaultyTransport
from tests.waiting import CEILING_S, polls

pytestmark = pytest.mark.simcord(settle_timeout=120)
IMAGE = {
    "training": {"steps": 4, "rank": 4, "learning_rate": 1e-2, "batch_size": 2},
    "zip": {"min_side": 32},
    "generation": {"steps": 1},
}
DEMO = r"/api/demo/tadz"


@pytest.fixture
def engine_settings(tmp_path: Path) -> EngineSettings:
    return make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image=IMAGE,
    )


@pytest.fixture
def bot_config(tmp_path: Path) -> BotConfig:
    config = make_bot_config(
        tmp_path / "bot",
        jobs={"poll_seconds": 0.05, "post_backoff_seconds": 0.01, "lost_lookup_seconds": 3},
    )
    tada = config.tada.model_copy(update={"backoff_base_seconds": 0.01, "max_retries": 3})
    return config.model_copy(update={"tada": tada})


@pytest.fixture
def faults() -> FaultyTransport:
    return FaultyTransport()


@pytest.fixture
async def services(
    bot_config: BotConfig, engine: tuple[FastAPI, httpx.AsyncClient], faults: FaultyTransport
) -> AsyncIterator[BotServices]:
    """The bot's services, their HTTP going through the faults to the engine."""
    app, _ = engine
    faults.inner = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=faults, base_url=ENGINE_URL) as http,
        open_services(bot_config, http=http, base_url=ENGINE_URL) as built,
    ):
        yield built


async def linked(env: simcord.Env, services: BotServices, api: httpx.AsyncClient):
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))
    key = await register(api, "alice@example.com")
    await services.members.save(alice.id, SecretStr(key), via=LinkedVia.LINK)
    return channel, alice, key


def texts(result: simcord.InteractionResult) -> list[str]:
    return [m.content for m in [result.response, *result.followups] if m is not None]


async def test_reads_are_retried_through_5xx_timeouts_and_refusals(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient, faults: FaultyTransport
) -> None:
    channel, alice, _ = await linked(simcord_env, services, api)
    route = "GET /api/voices"
    faults.script("GET", "/api/voices", Fault.UNAVAILABLE, Fault.TIMEOUT, Fault.REFUSED)

    result = await alice.slash(channel, "tada account")

    assert any("Voices: 0" in t for t in texts(result)), texts(result)
    assert faults.sent[route] == 4 and faults.reached[route] == 1


async def test_a_read_that_keeps_failing_is_explained(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient, faults: FaultyTransport
) -> None:
    channel, alice, _ = await linked(simcord_env, services, api)
    faults.script("GET", "/api/.*", *[Fault.UNAVAILABLE] * 40)

    result = await alice.slash(channel, "tada account")

    shown = texts(result)
    assert any("Voices: unavailable" in t for t in shown), shown
    assert faults.sent["GET /api/voices"] == 4  # 1 + max_retries, then it stops
    _ = simcord_env.errors


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.LOST_ANSWER, Fault.TIMEOUT])
async def test_a_failed_generation_is_never_sent_twice_and_fails_clearly(
    simcord_env: simcord.Env,
    services: BotServices,
    api: httpx.AsyncClient,
    faults: FaultyTransport,
    fault: Fault,
) -> None:
    channel, alice, _ = await linked(simcord_env, services, api)
    faults.script("POST", DEMO, fault)

    result = await alice.slash(channel, "demo tadz", prompt="a cat")

    [job] = await simcord_env.bot.jobs.store.for_member(alice.id)  # type: ignore[attr-defined]
    assert job.state is JobState.FAILED and job.error, job
    # The acknowledgement never says "Done" above a failure.
    assert result.response is not None and "Done" not in result.response.content
    assert "Failed" in result.response.content, result.response.content
    assert "reference" not in job.error or fault is Fault.SERVER_ERROR
    assert faults.sent[f"POST {DEMO}"] == 1  # not idempotent: never repeated
    posted = [m for m in channel.history() if alice.mention in m.content]
    assert len(posted) == 1 and "failed" in posted[0].content, [m.content for m in posted]
    _ = simcord_env.errors


async def _trained_lora(api: httpx.AsyncClient, key: str) -> str:
    h = {"X-API-Key": key}
    target = (
        await api.post(
            "/api/loras/uploads/url",
            params={"name": "Cats", "trigger_word": "tadz", "file_name": "set.zip"},
            headers=h,
        )
    ).json()
    parts = urlsplit(target["upload_url"])
    await api.put(f"{parts.path}?{parts.query}", content=good_zip(4), headers=target["headers"])
    started = await api.post(f"/api/loras/trainings/{target['id']}", headers=h)
    assert started.status_code == 202, started.text
    for _ in polls():
        body = (await api.get(f"/api/loras/trainings/{target['id']}", headers=h)).json()
        if body["status"] in ("succeeded", "failed"):
            assert body["status"] == "succeeded", body
            return str(body["id"])
        await asyncio.sleep(0.05)
    raise AssertionError("training did not finish")


async def test_bot_restarted_mid_generation_every_job_ends_once_in_the_channel(
    simcord_env: simcord.Env,
    services: BotServices,
    api: httpx.AsyncClient,
    faults: FaultyTransport,
) -> None:
    channel, alice, key = await linked(simcord_env, services, api)
    lora = await _trained_lora(api, key)
    route = f"POST /api/loras/{lora}/generations"
    store = simcord_env.bot.jobs.store  # type: ignore[attr-defined]

    # 1. Cut before Ta-da saw it: told it was interrupted, with a Retry button.
    faults.script("POST", f"/api/loras/{lora}/generations", Fault.HOLD)
    await alice.slash(channel, "lora generate", lora=lora, prompt="a cat")
    [first] = await store.for_member(alice.id)
    assert first.state is JobState.RUNNING
    await simcord_env.restart_bot(create_bot(services))
    store = simcord_env.bot.jobs.store  # type: ignore[attr-defined]
    first = await store.get(first.id)
    assert first.state is JobState.INTERRUPTED and first.posted, first
    assert faults.reached[route] == 0

    # 2. Cut after Ta-da made it: the image is found and posted, not made again.
    faults.script("POST", f"/api/loras/{lora}/generations", Fault.HOLD_ANSWER)
    await alice.slash(channel, "lora generate", lora=lora, prompt="a dog")
    second = next(j for j in await store.for_member(alice.id) if j.id != first.id)
    assert second.state is JobState.RUNNING
    await simcord_env.restart_bot(create_bot(services))
    store = simcord_env.bot.jobs.store  # type: ignore[attr-defined]
    second = await store.get(second.id)
    assert second.state is JobState.FINISHED and second.posted, second
    assert faults.reached[route] == 1
    made = (await api.get("/api/loras/generations", headers={"X-API-Key": key})).json()
    assert [g["prompt"] for g in made] == ["a dog"]  # one image, made once

    # In the channel: each job's outcome exactly once, mentioning the member.
    history = [m for m in channel.history() if alice.mention in m.content]
    outcome_ids = [m.id for m in history]
    assert first.result_message_id in outcome_ids and second.result_message_id in outcome_ids
    assert len({first.result_message_id, second.result_message_id}) == 2
    interrupted = next(m for m in history if m.id == first.result_message_id)
    # Its Retry button (a persistent view, in the new process) runs it again, and it works.
    await alice.click(interrupted, label="Retry")
    made = (await api.get("/api/loras/generations", headers={"X-API-Key": key})).json()
    assert sorted(g["prompt"] for g in made) == ["a cat", "a dog"]
    _ = simcord_env.errors


async def test_discord_429_while_posting_is_waited_out_and_posted_once(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice, _ = await linked(simcord_env, services, api)
    simcord_env.inject_error("POST", "/webhooks/*", status=429, times=None)
    simcord_env.inject_error("POST", "/channels/*/messages", status=429, times=2)

    await alice.slash(channel, "demo tadz", prompt="a cat")

    [job] = await simcord_env.bot.jobs.store.for_member(alice.id)  # type: ignore[attr-defined]
    assert job.posted and job.result_message_id is not None
    posted = [m for m in channel.history() if alice.mention in m.content]
    assert len(posted) == 1 and posted[0].id == job.result_message_id
    _ = simcord_env.errors


async def test_a_generation_whose_answer_is_lost_is_looked_up_and_posted_once(
    simcord_env: simcord.Env,
    services: BotServices,
    api: httpx.AsyncClient,
    faults: FaultyTransport,
) -> None:
    channel, alice, key = await linked(simcord_env, services, api)
    lora = await _trained_lora(api, key)
    path = f"/api/loras/{lora}/generations"
    store = simcord_env.bot.jobs.store  # type: ignore[attr-defined]

    # The engine made the image, the answer timed out: found in the listing, posted.
    faults.script("POST", path, Fault.LOST_ANSWER)
    made = await alice.slash(channel, "lora generate", lora=lora, prompt="a dog")
    [job] = await store.for_member(alice.id)
    assert job.state is JobState.FINISHED and job.posted, job
    assert faults.sent[f"POST {path}"] == 1  # looked up, not sent again
    listed = (await api.get("/api/loras/generations", headers={"X-API-Key": key})).json()
    assert [g["prompt"] for g in listed] == ["a dog"] and job.tada_id == listed[0]["id"]
    assert made.response is not None and "Done" in made.response.content

    # The client gave up while the engine still worked: looked for until it is listed.
    faults.script("POST", path, Fault.EARLY_TIMEOUT)
    await alice.slash(channel, "lora generate", lora=lora, prompt="a bird")
    late = next(j for j in await store.for_member(alice.id) if j.params["prompt"] == "a bird")
    assert late.state is JobState.FINISHED and late.posted, late
    assert faults.sent[f"POST {path}"] == 2

    # The request timed out before the engine saw it: nothing to find, a clear failure.
    faults.script("POST", path, Fault.TIMEOUT)
    await alice.slash(channel, "lora generate", lora=lora, prompt="a dog")
    second = next(j for j in await store.for_member(alice.id) if j.id not in (job.id, late.id))
    assert second.state is JobState.FAILED and second.error and second.posted, second

    history = [m for m in channel.history() if alice.mention in m.content]
    assert [m.id for m in history].count(job.result_message_id) == 1
    found = next(m for m in history if m.id == job.result_message_id)
    assert found.attachments and "failed" not in found.content
    assert [m.id for m in history].count(second.result_message_id) == 1
    _ = simcord_env.errors
