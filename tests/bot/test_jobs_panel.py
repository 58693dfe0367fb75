"""``/jobs`` in SimCord: recent results with links, queued jobs with their place in line
and a cancel button that keeps them from ever reaching Ta-da."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import BotServices
from bot.config import BotConfig
from bot.errors import UserFacingError
from bot.gate import Feature
from bot.jobs import JobKind, JobRunner, JobState
from bot.jobs.panel import CANCELED, JobPanel
from bot.policy import Limit
from bot.store import LinkedVia
from bot.store.models import utcnow
from engine.settings import EngineSettings
from tests.bot.conftest import busy_job, make_bot_config
from tests.bot.policy_world import (
    count_engine_calls,
    demo_engine_settings,
    demo_loras,
)
from tests.conftest import register

__all__ = ["demo_loras"]  # the module-scoped fixture, used through engine_settings

pytestmark = pytest.mark.simcord(settle_timeout=120)


@pytest.fixture
def engine_settings(tmp_path: Path, demo_loras: dict[str, Path]) -> EngineSettings:
    return demo_engine_settings(tmp_path / "engine", demo_loras)


@pytest.fixture
def bot_config(tmp_path: Path) -> BotConfig:
    # One job at a time per member, so a second request waits in line.
    return make_bot_config(tmp_path / "bot", jobs={"per_member": 1})


async def linked_member(
    env: simcord.Env, services: BotServices, api: httpx.AsyncClient, name: str
) -> tuple[simcord.ChannelHandle, simcord.MemberActor]:
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    member = guild.add_member(env.create_user(name))
    key = await register(api, f"{name}@example.com")
    await services.members.save(member.id, SecretStr(key), via=LinkedVia.LINK)
    return channel, member


async def quota_text(member: simcord.MemberActor, channel: simcord.ChannelHandle) -> str:
    result = await member.slash(channel, "quota")
    assert result.response is not None
    return result.response.content


def runner_of(env: simcord.Env) -> JobRunner:
    runner = env.bot.jobs  # type: ignore[attr-defined]
    assert isinstance(runner, JobRunner)
    return runner


async def test_no_jobs_yet(simcord_env: simcord.Env) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    result = await alice.slash(channel, "jobs")
    assert result.ephemeral and result.response is not None
    assert result.response.content.startswith("You have no jobs yet.")
    assert result.response.components == []


async def test_recent_results_link_to_the_posted_message(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked_member(simcord_env, services, api, "alice")
    made = await alice.slash(channel, "demo tadz", prompt="a cat on a roof")
    posted = made.followups[-1]

    result = await alice.slash(channel, "jobs")

    assert result.ephemeral and result.response is not None
    text = result.response.content
    assert "**Recent**" in text and "✅ Demo image (tadz) “a cat on a roof”" in text
    assert f"/{channel.id}/{posted.id})" in text
    assert result.response.components == []


async def test_a_running_training_is_named_by_its_lora(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked_member(simcord_env, services, api, "alice")
    runner = runner_of(simcord_env)
    # A training another process watches (the name is the upload's, set when it started).
    job = await runner.store.create(
        user_id=alice.id,
        guild_id=None,
        channel_id=None,
        kind=JobKind.LORA_TRAIN,
        params={"upload_id": "u" * 32, "name": "Cats", "trigger_word": "tadz"},
    )
    assert await runner.store.claim(job.id, "another-process", lease=timedelta(minutes=5))
    await runner.store.update(job.id, state=JobState.RUNNING, started_at=utcnow())

    result = await alice.slash(channel, "jobs")

    assert result.response is not None
    assert "**Running**\n• LoRA training “Cats” · running since <t:" in result.response.content


async def test_queued_jobs_show_their_place_and_cancel_before_any_ta_da_call(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked_member(simcord_env, services, api, "alice")
    guild_id = channel.guild.id  # type: ignore[union-attr]
    assert services.policy is not None
    await services.policy.set_quota(guild_id, guild_id, Feature.DEMO, Limit.IMAGES_PER_DAY, 5)
    runner = runner_of(simcord_env)
    # Alice's only slot is taken (a long job of hers): what she asks next waits in line.
    await busy_job(runner, alice.id)
    calls = count_engine_calls(api)

    first = await alice.slash(channel, "demo tadz", prompt="a dog")
    second = await alice.slash(channel, "demo pudgy", prompt="a bird")
    assert first.response is not None and "number 1 in line" in first.response.content
    assert second.response is not None and "number 2 in line" in second.response.content

    shown = await alice.slash(channel, "jobs")
    assert shown.response is not None
    text = shown.response.content
    assert "1. Demo image (tadz) “a dog” · number 1 in line" in text
    assert "2. Demo image (pudgy) “a bird” · number 2 in line" in text
    labels = [c["label"] for row in shown.response.components for c in row["components"]]
    assert labels == ["Cancel 1", "Cancel 2"]
    assert "3 of 5 images per day left" in await quota_text(alice, channel)

    # Someone else cannot press Alice's buttons.
    bob = channel.guild.add_member(simcord_env.create_user("bob"))  # type: ignore[union-attr]
    with pytest.raises(simcord.SetupError):
        await bob.click(shown.response, label="Cancel 1")

    clicked = await alice.click(shown.response, label="Cancel 1")

    assert clicked.response is not None
    after = clicked.response.content
    assert after.startswith("Cancelled.")
    assert "“a dog”" in after and "1. Demo image (pudgy) “a bird” · number 1 in line" in after
    jobs = await runner.store.for_member(alice.id)
    dog = next(j for j in jobs if j.params["prompt"] == "a dog")
    assert dog.state is JobState.FAILED and dog.error == CANCELED and dog.posted
    assert await runner.position(dog.id) is None
    assert calls == []
    # The cancelled image no longer counts against her quota.
    assert "4 of 5 images per day left" in await quota_text(alice, channel)

    # A job that is not waiting any more cannot be cancelled.
    panel = JobPanel(runner)
    with pytest.raises(UserFacingError, match="already started"):
        await panel.cancel(alice.id, dog.id)
    bird = next(j for j in jobs if j.params["prompt"] == "a bird")
    with pytest.raises(UserFacingError, match="not one of yours"):
        await panel.cancel(bob.id, bird.id)
