"""The composition root's bot: extensions loaded in setup_hook, command sync per config."""

from __future__ import annotations

import discord
import httpx
import pytest
import simcord
from fastapi import FastAPI
from pydantic import SecretStr

from bot.app import BotServices, create_bot, open_services
from bot.config import BotConfig, DiscordConfig
from bot.gate import Feature
from bot.store import LinkedVia
from tests.bot.conftest import ENGINE_URL
from tests.conftest import register

# Each interaction is settled when the bot's work on it is done; under load (a niced pass
# on a busy machine) that took over SimCord's default 5 s, so a ceiling, not a wait.
pytestmark = pytest.mark.simcord(settle_timeout=120)

DEV_GUILD = 1456074443980812345


async def test_commands_sync_to_the_development_guild_only(
    bot_config: BotConfig, engine: tuple[FastAPI, httpx.AsyncClient]
) -> None:
    config = bot_config.model_copy(update={"discord": DiscordConfig(dev_guild_id=DEV_GUILD)})
    _, api = engine
    async with open_services(config, http=api, base_url=ENGINE_URL) as services:
        env = simcord.Env(create_bot(services))
        dev = env.create_guild("dev", id=DEV_GUILD)
        other = env.create_guild("elsewhere")
        await env.start()
        try:
            dev_channel = dev.create_text_channel("general")
            other_channel = other.create_text_channel("general")
            alice = dev.add_member(env.create_user("alice"))
            bob = other.add_member(env.create_user("bob"))
            assert "tada help" in alice.available_commands(dev_channel)
            assert bob.available_commands(other_channel) == ()
            synced = [r.path for r in env.http_requests if r.method == "PUT"]
            assert synced == [f"/applications/{env.bot.application_id}/guilds/{DEV_GUILD}/commands"]
            result = await alice.slash(dev_channel, "tada help")
            assert result.response is not None and "/tada register" in result.response.content
        finally:
            await env.shutdown()


async def test_without_a_development_guild_commands_sync_globally(
    simcord_env: simcord.Env,
) -> None:
    synced = [r.path for r in simcord_env.http_requests if r.method == "PUT"]
    assert synced == [f"/applications/{simcord_env.bot.application_id}/commands"]
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    assert {"tada register", "tada link", "tada account", "tada forget", "tada help"} <= set(
        alice.available_commands(channel)
    )


async def test_the_gate_reads_threads_whichever_cogs_are_loaded(
    services: BotServices, api: httpx.AsyncClient
) -> None:
    # Only /demo: neither /tada-admin nor /quota, whose set-up once bound the gate to the bot.
    env = simcord.Env(create_bot(services, extensions=("cogs.demo",)))
    await env.start()
    try:
        guild = env.create_guild("art club")
        art = guild.create_text_channel("art")
        alice = guild.add_member(env.create_user("alice"))
        assert services.policy is not None
        await services.policy.allow_channel(guild.id, Feature.DEMO, art.id)
        key = await register(api, "alice@example.com")
        await services.members.save(alice.id, SecretStr(key), via=LinkedVia.LINK)
        parent = env.bot.get_channel(art.id)
        assert isinstance(parent, discord.TextChannel)
        await parent.create_thread(name="cats", type=discord.ChannelType.public_thread)
        [thread] = art.threads

        # A thread works where its channel does: the gate must see the thread's parent.
        result = await alice.slash(thread, "demo tadz", prompt="a cat")

        # Admitted (the refusal would say "`/demo` does not work in this channel"): the job
        # ran, and its outcome replaced the note (this engine has no demo model).
        assert result.response is not None
        assert "does not work in this channel" not in result.response.content
        assert result.followups and "demo image" in result.followups[-1].content
    finally:
        await env.shutdown()
