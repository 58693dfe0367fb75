"""Buttons on old messages whose job or account is gone answer the member briefly and
privately, never "Something went wrong" (issue 15, defect 4)."""

from __future__ import annotations

import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import BotServices
from bot.store import LinkedVia
from tests.bot.media_samples import speech_wav
from tests.bot.worker_world import bot_config, engine_settings  # noqa: F401
from tests.conftest import register

pytestmark = pytest.mark.simcord(settle_timeout=120)


def answer(result: simcord.InteractionResult) -> str:
    """The private answer the member got to a click."""
    messages = ([result.response] if result.response else []) + result.followups
    assert messages and all(m.ephemeral for m in messages), messages
    return "\n".join(m.content for m in messages)


async def test_buttons_after_forget_say_what_happened(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    key = await register(api, "alice@example.com")
    await services.members.save(alice.id, SecretStr(key), via=LinkedVia.LINK)
    tada = services.tada.with_key(SecretStr(key))
    target = await tada.create_voice_upload_url("Alice", "alice.wav")
    await tada.put_upload(target, await speech_wav())
    voice = await tada.create_voice(target.upload_id)
    card = (await alice.slash(channel, "voice info", voice=voice.id)).response
    assert card is not None
    result = (await alice.slash(channel, "voice speak", voice=voice.id, text="Hello.")).followups[
        -1
    ]

    asked = await alice.slash(channel, "tada forget")
    assert asked.response is not None
    await alice.click(asked.response, label="Delete my data")

    again = answer(await alice.click(result, label="Speak again"))
    assert "no longer" in again and "Something went wrong" not in again
    speak = answer(await alice.click(card, label="Speak"))
    assert "/tada link" in speak and "Something went wrong" not in speak
    # Delete still works for its owner; a second press on a message already gone is quiet.
    await alice.click(result, label="Delete")
    assert result.id not in [m.id for m in channel.history()]
    _ = simcord_env.errors
