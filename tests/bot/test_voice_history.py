"""``/voice history`` entries play again, privately, and can be posted in the channel,
without a new generation (issue 15, voice-bot features)."""

from __future__ import annotations

import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import BotServices, create_bot
from bot.store import LinkedVia
from tests.bot.media_samples import speech_wav
from tests.bot.mentions import assert_pings_at_most
from tests.bot.worker_world import bot_config, engine_settings  # noqa: F401
from tests.conftest import register

pytestmark = pytest.mark.simcord(settle_timeout=120)


async def test_history_entries_replay_privately_and_post_in_the_channel(
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
    spoken = await tada.generate_voice(voice.id, "Good morning, everyone.")
    assert spoken.id is not None

    history = await alice.slash(channel, "voice history", voice=voice.id)
    assert history.response is not None
    played = await alice.select(history.response, [spoken.id])
    replay = played.followups[-1] if played.followups else played.response
    assert replay is not None
    assert replay.ephemeral and "Good morning, everyone." in replay.content
    [audio] = replay.attachments
    assert audio.filename == "speech.mp3" and len(await audio.read()) > 1000
    generations = await tada.list_voice_generations(voice.id)
    assert generations.total == 1  # replaying made nothing new

    # Alice posts it in the channel, also after a restart (a persistent button).
    await simcord_env.restart_bot(create_bot(services))
    await alice.click(replay, label="Post in channel")
    posted = channel.last_message
    assert posted is not None and "**Alice** said" in posted.content
    assert "Good morning, everyone." in posted.content and alice.mention in posted.content
    assert posted.attachments[0].filename == "speech.mp3"
    assert (await tada.list_voice_generations(voice.id)).total == 1
    assert_pings_at_most(simcord_env, {alice.id})
    _ = simcord_env.errors
