"""A member's whole account lifecycle, in SimCord, against the real engine in-process."""

from __future__ import annotations

import logging
import socket

import httpx
import pytest
import simcord
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import delete, update

from bot.app import BotServices, create_bot, open_services
from bot.config import BotConfig, TadaConfig
from bot.crypto import DecryptionError
from bot.errors import NotLinked, UserFacingError
from bot.store import Member
from bot.tada import TadaTransportError, Unauthorized
from engine.models import User
from tests.conftest import register, services_of
from tests.engine.image.zips import good_zip

# Each interaction is settled when the bot's work on it is done; under load (a niced pass
# on a busy machine) that took over SimCord's default 5 s, so a ceiling, not a wait.
pytestmark = pytest.mark.simcord(settle_timeout=120)


def world(env: simcord.Env) -> tuple[simcord.ChannelHandle, simcord.MemberActor]:
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))
    return channel, alice


def acknowledge(env: simcord.Env, *expected: type[BaseException]) -> list[BaseException]:
    """Take the errors the bot's handler reported (SimCord re-raises them otherwise)."""
    with pytest.raises(BaseExceptionGroup) as caught:
        env.raise_errors()
    errors = [_root(e) for e in caught.value.exceptions]
    assert [type(e) for e in errors] == list(expected), errors
    return errors


def _root(error: BaseException) -> BaseException:
    original = getattr(error, "original", None)
    return original if isinstance(original, BaseException) else error


async def test_register_through_the_modal_stores_the_key_encrypted(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = world(simcord_env)

    shown = await alice.slash(channel, "tada register")
    assert shown.modal is not None
    assert shown.modal["title"] == "Create a Ta-da account"
    result = await alice.submit_modal(shown, {"email": "alice@example.com"})

    assert result.ephemeral
    assert result.response is not None
    text = result.response.content
    assert "alice@example.com" in text and "ready" in text
    account = await services.members.get(alice.id)
    assert account is not None
    key = account.api_key.get_secret_value()
    assert key.startswith("tada_") and f"||{key}||" in text
    # The engine knows this key: it authenticates.
    resp = await api.get("/api/voices/uploads", headers={"X-API-Key": key})
    assert resp.status_code == 200
    # Nothing was posted where others can see it.
    assert channel.last_message is None


async def test_register_with_a_taken_email_explains_link(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    await register(api, "taken@example.com")
    channel, alice = world(simcord_env)

    shown = await alice.slash(channel, "tada register")
    result = await alice.submit_modal(shown, {"email": "TAKEN@example.com"})

    assert result.ephemeral and result.response is not None
    assert "already has a Ta-da account" in result.response.content
    assert "/tada link" in result.response.content
    assert await services.members.get(alice.id) is None
    acknowledge(simcord_env, UserFacingError)


async def test_register_with_an_invalid_email_says_so(
    simcord_env: simcord.Env, services: BotServices
) -> None:
    channel, alice = world(simcord_env)
    shown = await alice.slash(channel, "tada register")
    result = await alice.submit_modal(shown, {"email": "not-an-email"})
    assert result.response is not None
    assert "valid email" in result.response.content
    assert await services.members.get(alice.id) is None
    acknowledge(simcord_env, UserFacingError)


async def test_register_when_already_linked_is_refused_without_a_modal(
    simcord_env: simcord.Env, api: httpx.AsyncClient
) -> None:
    channel, alice = world(simcord_env)
    key = await register(api, "alice@example.com")
    shown = await alice.slash(channel, "tada link")
    await alice.submit_modal(shown, {"api_key": key})

    again = await alice.slash(channel, "tada register")
    assert again.modal is None
    assert again.ephemeral and again.response is not None
    assert "already have a Ta-da account linked" in again.response.content
    assert key not in again.response.content
    acknowledge(simcord_env, UserFacingError)


async def test_link_a_good_key(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    key = await register(api, "alice@example.com")
    channel, alice = world(simcord_env)

    shown = await alice.slash(channel, "tada link")
    assert shown.modal is not None
    result = await alice.submit_modal(shown, {"api_key": f"  {key}\n"})

    assert result.ephemeral and result.response is not None
    assert "Linked" in result.response.content
    assert f"tada_…{key[-4:]}" in result.response.content
    assert key not in result.response.content
    account = await services.members.get(alice.id)
    assert account is not None and account.api_key.get_secret_value() == key


async def test_link_a_wrong_key_is_refused_and_not_stored(
    simcord_env: simcord.Env, services: BotServices
) -> None:
    channel, alice = world(simcord_env)
    shown = await alice.slash(channel, "tada link")
    result = await alice.submit_modal(shown, {"api_key": "tada_this-key-does-not-exist"})

    assert result.ephemeral and result.response is not None
    assert "does not accept that API key" in result.response.content
    assert await services.members.get(alice.id) is None
    acknowledge(simcord_env, UserFacingError)


async def test_account_summary_counts_what_the_api_holds(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    key = await register(api, "alice@example.com")
    client = services.tada.with_key(SecretStr(key))
    for name in ("first", "second"):
        target = await client.create_lora_upload_url(name, "tadz", f"{name}.zip")
        await client.put_upload(target, good_zip(4, size=256))
    channel, alice = world(simcord_env)
    await alice.submit_modal(await alice.slash(channel, "tada link"), {"api_key": key})

    result = await alice.slash(channel, "tada account")

    assert result.ephemeral and result.response is not None
    callbacks = [r for r in simcord_env.http_requests if r.path.endswith("/callback")]
    assert (callbacks[-1].json or {}).get("type") == 5  # deferred before calling the API
    text = result.response.content
    assert "linked (linked key)" in text
    assert f"`tada_…{key[-4:]}`" in text and key not in text
    assert "LoRAs: 2" in text
    assert "Voices: 0" in text and "Generations: 0" in text


async def test_a_command_used_before_linking_says_link_or_register_first(
    simcord_env: simcord.Env,
) -> None:
    channel, alice = world(simcord_env)
    result = await alice.slash(channel, "tada account")
    assert result.acknowledged and result.ephemeral
    replies = [m.content for m in [result.response, *result.followups] if m is not None]
    assert any("link or register first" in text for text in replies), replies
    acknowledge(simcord_env, NotLinked)


async def test_forget_deletes_the_key_after_confirmation(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    key = await register(api, "alice@example.com")
    channel, alice = world(simcord_env)
    await alice.submit_modal(await alice.slash(channel, "tada link"), {"api_key": key})

    asked = await alice.slash(channel, "tada forget")
    assert asked.ephemeral and asked.response is not None
    assert "Sure?" in asked.response.content
    assert await services.members.get(alice.id) is not None  # nothing deleted yet

    done = await alice.click(asked.response.message, label="Delete my data")
    assert done.acknowledged
    assert await services.members.get(alice.id) is None
    assert await services.members.count() == 0
    message = asked.response.message
    refreshed = simcord_env.backend.get_message(message.channel.id, message.id)
    assert "everything the bot kept about you are deleted" in refreshed.content

    after = await alice.slash(channel, "tada account")
    assert after.response is not None
    assert "link or register first" in after.response.content
    acknowledge(simcord_env, NotLinked)


async def test_forget_cancelled_keeps_everything(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    key = await register(api, "alice@example.com")
    channel, alice = world(simcord_env)
    await alice.submit_modal(await alice.slash(channel, "tada link"), {"api_key": key})
    asked = await alice.slash(channel, "tada forget")
    assert asked.response is not None
    await alice.click(asked.response.message, label="Cancel")
    assert await services.members.get(alice.id) is not None


async def test_an_unexpected_error_reaches_the_member_as_a_reference_id(
    simcord_env: simcord.Env,
    services: BotServices,
    api: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = await register(api, "alice@example.com")
    channel, alice = world(simcord_env)
    await alice.submit_modal(await alice.slash(channel, "tada link"), {"api_key": key})
    # The stored ciphertext no longer decrypts (say, the encryption key was changed).
    async with services.store.session() as session:
        await session.execute(
            update(Member)
            .where(Member.discord_user_id == alice.id)
            .values(api_key_encrypted=b"gAAAAA-not-a-fernet-token")
        )
        await session.commit()

    with caplog.at_level(logging.ERROR, logger="bot.errors"):
        result = await alice.slash(channel, "tada account")

    assert result.ephemeral and result.response is not None
    text = result.response.content
    assert "Something went wrong" in text
    logged = [r for r in caplog.records if r.name == "bot.errors" and r.exc_info]
    assert len(logged) == 1
    reference = logged[0].args[-1]  # type: ignore[index]
    assert isinstance(reference, str) and len(reference) == 8
    assert f"`{reference}`" in text
    assert "/tada account" in logged[0].getMessage()
    acknowledge(simcord_env, DecryptionError)


async def test_help_lists_the_commands(simcord_env: simcord.Env) -> None:
    channel, alice = world(simcord_env)
    result = await alice.slash(channel, "tada help")
    assert result.ephemeral and result.response is not None
    text = result.response.content
    for name in ("register", "link", "account", "forget", "help"):
        assert f"`/tada {name}`" in text
    assert "Create a Ta-da account" in text


async def test_forget_unanswered_expires_and_deletes_nothing(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    key = await register(api, "alice@example.com")
    channel, alice = world(simcord_env)
    await alice.submit_modal(await alice.slash(channel, "tada link"), {"api_key": key})
    asked = await alice.slash(channel, "tada forget")
    assert asked.response is not None

    await simcord_env.advance_time(121)

    message = asked.response.message
    refreshed = simcord_env.backend.get_message(message.channel.id, message.id)
    assert refreshed.content == "No answer, so nothing was deleted."
    assert await services.members.get(alice.id) is not None


async def test_an_unreachable_api_is_explained_and_nothing_is_stored(
    bot_config: BotConfig,
) -> None:
    # The whole bot configured with an API URL where nothing listens (the API "is down").
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    config = bot_config.model_copy(
        update={"tada": TadaConfig(base_url=f"http://127.0.0.1:{port}", max_retries=0)}
    )
    async with open_services(config) as services, simcord.run(create_bot(services)) as env:
        channel, alice = world(env)
        result = await alice.submit_modal(
            await alice.slash(channel, "tada link"), {"api_key": "tada_whatever-key"}
        )
        assert result.response is not None
        assert "cannot be reached" in result.response.content
        assert await services.members.get(alice.id) is None
        acknowledge(env, TadaTransportError)


async def test_a_revoked_key_asks_the_member_to_link_a_current_one(
    simcord_env: simcord.Env, engine: tuple[FastAPI, httpx.AsyncClient]
) -> None:
    app, api = engine
    key = await register(api, "alice@example.com")
    channel, alice = world(simcord_env)
    await alice.submit_modal(await alice.slash(channel, "tada link"), {"api_key": key})
    async with services_of(app).db.session() as session:  # the account is deleted upstream
        await session.execute(delete(User))
        await session.commit()

    result = await alice.slash(channel, "tada account")

    assert result.response is not None
    assert "refused your API key" in result.response.content
    assert "/tada link" in result.response.content
    acknowledge(simcord_env, Unauthorized)


def test_help_fits_one_message_whatever_the_number_of_commands() -> None:
    import discord
    from discord import app_commands

    from cogs.account import render_help

    tree = app_commands.CommandTree(discord.Client(intents=discord.Intents.none()))
    for g in range(6):
        group = app_commands.Group(name=f"group{g}", description="a group")
        for c in range(8):

            async def run(interaction: discord.Interaction) -> None:  # pragma: no cover
                del interaction

            group.add_command(
                app_commands.Command(
                    name=f"command{c}", description="does something useful " * 5, callback=run
                )
            )
        tree.add_command(group)
    text = render_help(tree)
    assert len(text) <= 2000
    assert all(f"/group{g} command{c}" in text for g in range(6) for c in range(8))
