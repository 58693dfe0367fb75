"""Explicit images and the channel they would land in, as members and admins live it in
SimCord: withheld (told privately, not counted) in a channel that is not age-restricted,
posted in an age-restricted one when the server allows it, and ``/tada-admin
explicit-images`` choosing between the two.

The verdict comes from a scripted classifier injected through the composition root (no
explicit image is needed to get an "explicit" verdict); one test runs the real one
(NudeNet, when installed) on the same path. SimCord 3.2 does not model age-restricted
channels, so :func:`age_restricted` adds Discord's ``nsfw`` field to the payloads the
simulated Discord sends for the channels a test marks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import discord
import httpx
import pytest
import simcord
from fastapi import FastAPI
from pydantic import SecretStr
from simcord.backend import serializers

from bot.app import BotServices, open_services
from bot.config import BotConfig
from bot.jobs import JobState
from bot.policy.settings import ExplicitImages
from bot.safety import ImageSafety
from bot.safety.nudenet import model_path
from bot.store import LinkedVia
from engine.settings import EngineSettings
from tests.bot.conftest import ENGINE_URL
from tests.bot.policy_world import Server, admin_says, demo_engine_settings, demo_loras, make_server
from tests.bot.safety_world import ScriptedClassifier
from tests.conftest import register

__all__ = ["demo_loras"]  # the module-scoped fixture, used through engine_settings

pytestmark = pytest.mark.simcord(settle_timeout=120)


@pytest.fixture
def classifier() -> ScriptedClassifier:
    return ScriptedClassifier()


@pytest.fixture
def engine_settings(tmp_path: Path, demo_loras: dict[str, Path]) -> EngineSettings:
    return demo_engine_settings(tmp_path / "engine", demo_loras)


@pytest.fixture
async def services(
    bot_config: BotConfig,
    engine: tuple[FastAPI, httpx.AsyncClient],
    classifier: ScriptedClassifier,
    request: pytest.FixtureRequest,
) -> AsyncIterator[BotServices]:
    """The composition root with the scripted classifier (``real_classifier`` marker: the
    one ``[safety]`` names, NudeNet when installed)."""
    safety = None if request.node.get_closest_marker("real_classifier") else ImageSafety(classifier)
    async with open_services(bot_config, http=engine[1], base_url=ENGINE_URL, safety=safety) as s:
        yield s


@pytest.fixture
def age_restricted(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[int]]:
    """Channel ids the simulated Discord reports as age-restricted (``nsfw``)."""
    marked: set[int] = set()
    original = serializers.channel_payload

    def payload(backend: Any, channel: Any) -> Any:
        built = original(backend, channel)
        if channel.id in marked:
            built = {**built, "nsfw": True}
        return built

    monkeypatch.setattr(serializers, "channel_payload", payload)
    yield marked


@pytest.fixture
async def server(simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient) -> Server:
    built = make_server(simcord_env)
    key = await register(api, "alice@example.com")
    await services.members.save(built.alice.id, SecretStr(key), via=LinkedVia.LINK)
    return built


async def adults_channel(
    simcord_env: simcord.Env, server: Server, age_restricted: set[int]
) -> simcord.ChannelHandle:
    """A text channel the admins marked age-restricted (Discord sends a channel update)."""
    channel = server.guild.create_text_channel("adults")
    age_restricted.add(channel.id)
    simcord_env.backend.announce_channel_update(channel.id)
    await simcord_env.settle()
    seen = simcord_env.bot.get_channel(channel.id)
    assert isinstance(seen, discord.TextChannel) and seen.is_nsfw()
    return channel


def private_lines(result: simcord.InteractionResult) -> list[str]:
    return [m.content for m in result.followups if m.ephemeral]


async def the_job(simcord_env: simcord.Env, member: simcord.MemberActor) -> Any:
    [job] = await simcord_env.bot.jobs.store.for_member(member.id)  # type: ignore[attr-defined]
    return job


async def test_an_explicit_image_is_withheld_in_a_normal_channel_and_not_counted(
    simcord_env: simcord.Env, server: Server, classifier: ScriptedClassifier
) -> None:
    # One image a day: a withheld image must not use it up.
    await admin_says(
        server,
        "quota set",
        role=server.guild.default_role,
        feature="demo",
        limit="images_per_day",
        amount=1,
    )

    asked = await server.alice.slash(server.general, "demo tadz", prompt="a cat")

    assert classifier.seen == 1
    # Nothing in the channel: no image, no failure notice.
    assert server.general.history() == []
    texts = private_lines(asked)
    assert any("judged explicit" in t and "not posted" in t for t in texts), texts
    assert not any(m.attachments or m.components for m in asked.followups)
    job = await the_job(simcord_env, server.alice)
    assert job.state is JobState.FAILED and job.private and job.posted
    assert (job.result or {}).get("withheld") is True
    assert "does not count against your quota" in (job.error or "")
    quota = await server.alice.slash(server.general, "quota")
    assert quota.response is not None
    assert "1 of 1 image per day left" in quota.response.content

    # An ordinary verdict: the next image is posted and counted as usual.
    classifier.explicit = False
    posted = await server.alice.slash(server.general, "demo tadz", prompt="a dog")
    assert posted.followups[-1].attachments and not posted.followups[-1].ephemeral
    quota = await server.alice.slash(server.general, "quota")
    assert quota.response is not None
    assert "0 of 1 image per day left" in quota.response.content


async def test_age_restricted_channels_only_when_the_admin_says_so(
    simcord_env: simcord.Env,
    server: Server,
    services: BotServices,
    age_restricted: set[int],
) -> None:
    adults = await adults_channel(simcord_env, server, age_restricted)

    # Default: blocked everywhere, the age-restricted channel included.
    asked = await server.alice.slash(adults, "demo tadz", prompt="a cat")
    assert adults.history() == []
    assert any("does not allow explicit images" in t for t in private_lines(asked))

    said = await admin_says(server, "explicit-images", allow="age_restricted")
    assert "age-restricted channels only" in said
    settings = await services.policy.settings(server.guild.id)
    assert settings.explicit_images is ExplicitImages.AGE_RESTRICTED
    shown = await server.admin.slash(server.general, "tada-admin show")
    assert shown.response is not None
    [field] = [f for f in shown.response.embeds[0].fields if f.name == "Explicit images"]
    assert "age-restricted channels only" in (field.value or "")
    assert "checked by scripted" in (field.value or "")

    posted = await server.alice.slash(adults, "demo tadz", prompt="a dog")
    assert posted.followups[-1].attachments and not posted.followups[-1].ephemeral
    assert [m.attachments != [] for m in adults.history()] == [True]

    elsewhere = await server.alice.slash(server.general, "demo tadz", prompt="a bird")
    assert server.general.history() == []
    assert any("not age-restricted" in t for t in private_lines(elsewhere))

    # And back: blocked everywhere again.
    said = await admin_says(server, "explicit-images", allow="blocked")
    assert "never posted" in said
    again = await server.alice.slash(adults, "demo tadz", prompt="a fish")
    assert len(adults.history()) == 1
    assert any("does not allow explicit images" in t for t in private_lines(again))


@pytest.mark.real_classifier
@pytest.mark.skipif(model_path() is None, reason="nudenet (the nsfw-filter extra) not installed")
async def test_the_real_classifier_lets_an_ordinary_image_through(
    simcord_env: simcord.Env, server: Server, services: BotServices
) -> None:
    assert services.safety.name == "nudenet"
    posted = await server.alice.slash(server.general, "demo pudgy", prompt="on a beach")
    assert posted.followups[-1].attachments
    assert [m.author.id for m in server.general.history()] == [simcord_env.bot.user.id]  # type: ignore[union-attr]
