"""Quotas and cooldowns as a member lives them in SimCord: ``/quota``, running out,
the reset when Discord's clock passes midnight UTC, the most generous role."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import discord
import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import BotServices
from bot.store import LinkedVia
from engine.settings import EngineSettings
from tests.bot.policy_world import (
    Server,
    admin_says,
    count_engine_calls,
    demo_engine_settings,
    demo_loras,
    make_server,
    take_refusals,
)
from tests.conftest import register

__all__ = ["demo_loras"]  # the module-scoped fixture, used through engine_settings

pytestmark = pytest.mark.simcord(settle_timeout=120)


@pytest.fixture
def engine_settings(tmp_path: Path, demo_loras: dict[str, Path]) -> EngineSettings:
    return demo_engine_settings(tmp_path / "engine", demo_loras)


@pytest.fixture
async def server(simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient) -> Server:
    built = make_server(simcord_env)
    key = await register(api, "alice@example.com")
    await services.members.save(built.alice.id, SecretStr(key), via=LinkedVia.LINK)
    return built


async def quota_text(member: simcord.MemberActor, channel: simcord.ChannelHandle) -> str:
    result = await member.slash(channel, "quota")
    assert result.ephemeral and result.response is not None
    return result.response.content


async def test_with_no_limits_quota_says_so(server: Server) -> None:
    text = await quota_text(server.alice, server.general)
    assert text.splitlines()[1:] == [
        "**Voice**: no limits.",
        "**LoRA**: no limits.",
        "**Demo**: no limits.",
    ]


async def test_the_quota_runs_out_and_resets_when_time_passes_midnight(
    simcord_env: simcord.Env, server: Server, api: httpx.AsyncClient
) -> None:
    await admin_says(
        server,
        "quota set",
        role=server.guild.default_role,
        feature="demo",
        limit="images_per_day",
        amount=2,
    )
    assert "0 of 2" not in await quota_text(server.alice, server.general)
    assert "2 of 2 images per day left" in await quota_text(server.alice, server.general)

    for prompt in ("a cat", "a dog"):
        posted = await server.alice.slash(server.general, "demo tadz", prompt=prompt)
        assert posted.followups[-1].attachments
    assert "0 of 2 images per day left" in await quota_text(server.alice, server.general)

    calls = count_engine_calls(api)
    refused = await server.alice.slash(server.general, "demo tadz", prompt="a bird")
    assert refused.ephemeral and refused.response is not None
    assert "used all your Demo allowance" in refused.response.content
    assert "resets <t:" in refused.response.content
    assert take_refusals(simcord_env) and calls == []

    # Discord's clock to the next midnight UTC: the day's count starts again.
    now = simcord_env.now()
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    await simcord_env.advance_time((midnight - now).total_seconds() + 1)

    assert "2 of 2 images per day left" in await quota_text(server.alice, server.general)
    again = await server.alice.slash(server.general, "demo tadz", prompt="a bird")
    assert again.followups[-1].attachments


async def test_the_most_generous_role_applies_and_cooldowns_tick(
    simcord_env: simcord.Env, server: Server, services: BotServices, api: httpx.AsyncClient
) -> None:
    patrons = server.guild.create_role("Patrons")
    everyone = server.guild.default_role
    await admin_says(
        server, "quota set", role=everyone, feature="demo", limit="images_per_day", amount=0
    )
    await admin_says(
        server, "quota set", role=patrons, feature="demo", limit="images_per_day", amount=5
    )
    await admin_says(
        server, "quota set", role=patrons, feature="demo", limit="cooldown_seconds", amount=60
    )
    pat = server.guild.add_member(simcord_env.create_user("pat"), roles=[patrons])
    key = await register(api, "pat@example.com")
    await services.members.save(pat.id, SecretStr(key), via=LinkedVia.LINK)

    # Alice has only @everyone: 0 images.
    refused = await server.alice.slash(server.general, "demo tadz", prompt="a cat")
    assert refused.response is not None and "used all your Demo allowance" in (
        refused.response.content
    )
    take_refusals(simcord_env)

    # Pat's Patrons role gives 5, with a minute between requests.
    assert (await pat.slash(server.general, "demo tadz", prompt="a cat")).followups[-1].attachments
    text = await quota_text(pat, server.general)
    assert "4 of 5 images per day left" in text and "next request <t:" in text
    waited = await pat.slash(server.general, "demo tadz", prompt="a dog")
    assert waited.response is not None and "60 s between Demo requests" in waited.response.content
    take_refusals(simcord_env)
    await simcord_env.advance_time(61)
    assert (await pat.slash(server.general, "demo tadz", prompt="a dog")).followups[-1].attachments


async def test_administrators_have_no_limits(simcord_env: simcord.Env, server: Server) -> None:
    await admin_says(
        server,
        "quota set",
        role=server.guild.default_role,
        feature="voice",
        limit="voice_characters_per_day",
        amount=100,
    )
    boss = server.guild.create_role("Boss", permissions=discord.Permissions(administrator=True))
    owner = server.guild.add_member(simcord_env.create_user("olga"), roles=[boss])
    text = await quota_text(owner, server.general)
    assert "**Voice**: no limits for server administrators." in text
    # Managing the server is not enough: the job runner exempts administrators only.
    assert "100 of 100" in await quota_text(server.admin, server.general)
    assert "100 of 100 voice characters per day left" in await quota_text(
        server.alice, server.general
    )


async def test_quota_in_direct_messages_explains_there_are_no_server_limits(
    simcord_env: simcord.Env,
) -> None:
    user = simcord_env.create_user("dee")
    result = await user.slash("quota")
    assert result.ephemeral and result.response is not None
    assert "no server limits" in result.response.content


async def test_forget_then_link_again_does_not_reset_the_quota(
    simcord_env: simcord.Env, server: Server, services: BotServices, api: httpx.AsyncClient
) -> None:
    await admin_says(
        server,
        "quota set",
        role=server.guild.default_role,
        feature="demo",
        limit="images_per_day",
        amount=1,
    )
    made = await server.alice.slash(server.general, "demo tadz", prompt="a cat")
    assert made.followups[-1].attachments

    asked = await server.alice.slash(server.general, "tada forget")
    assert asked.response is not None
    await server.alice.click(asked.response, label="Delete my data")
    assert await services.members.get(server.alice.id) is None
    # No personal data is left in the usage rows: the member's id is gone from them.
    async with services.store.session() as session:
        from sqlalchemy import text

        ids = (await session.execute(text("select discord_user_id from bot_usage"))).all()
    assert ids and all(row[0] is None for row in ids)

    key = await register(api, "alice2@example.com")
    await services.members.save(server.alice.id, SecretStr(key), via=LinkedVia.LINK)
    assert "0 of 1 image per day left" in await quota_text(server.alice, server.general)
    refused = await server.alice.slash(server.general, "demo tadz", prompt="a dog")
    assert refused.response is not None
    assert "used all your Demo allowance" in refused.response.content
    take_refusals(simcord_env)
    # The admin's report still counts the image.
    assert "1 demo image" in await admin_says(server, "usage", days=1)
