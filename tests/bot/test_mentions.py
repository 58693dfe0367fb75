"""Members cannot make the bot ping: @everyone, @here, roles and other members stay inert
in everything the bot posts (issue 15, defect 1)."""

from __future__ import annotations

import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import BotServices, create_bot
from bot.jobs import Destination, JobKind, JobState
from bot.store import LinkedVia
from bot.store.models import utcnow
from tests.bot.media_samples import speech_wav
from tests.bot.mentions import assert_pings_at_most, pinged
from tests.bot.worker_world import bot_config, engine_settings  # noqa: F401
from tests.conftest import register

pytestmark = [pytest.mark.simcord(settle_timeout=120), pytest.mark.slow(30)]


async def test_spoken_text_and_voice_names_ping_nobody_on_any_path(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    bob = guild.add_member(simcord_env.create_user("bob"))
    role = guild.create_role("mods", mentionable=True)
    key = await register(api, "alice@example.com")
    await services.members.save(alice.id, SecretStr(key), via=LinkedVia.LINK)
    tada = services.tada.with_key(SecretStr(key))
    target = await tada.create_voice_upload_url("@everyone", "alice.wav")
    await tada.put_upload(target, await speech_wav())
    voice = await tada.create_voice(target.upload_id)
    loud = f"@everyone free nitro @here <@{bob.id}> <@&{role.id}>"

    # The interaction's follow-up.
    spoken = await alice.slash(channel, "voice speak", voice=voice.id, text=loud)
    followup = spoken.followups[-1]
    assert "@everyone" in followup.content and not followup.message.mention_everyone
    assert pinged(simcord_env, channel.id, followup.id) == {alice.id}
    # The channel, when the interaction is gone.
    simcord_env.inject_error("POST", "/webhooks/*", status=404, code=10015, times=None)
    await alice.slash(channel, "voice speak", voice=voice.id, text=loud + " 2")
    posted = channel.last_message
    assert posted is not None and "@here" in posted.content
    assert not posted.mention_everyone and pinged(simcord_env, channel.id, posted.id) == {alice.id}
    assert not simcord_env.backend.messages[channel.id][posted.id].ping_role_ids
    # A DM, when the channel refuses.
    simcord_env.inject_error("POST", "/channels/*/messages", status=403, code=50013, times=1)
    await alice.slash(channel, "voice speak", voice=voice.id, text=loud + " 3")
    dm = alice.user.dm_channel.last_message
    assert dm is not None and "3" in dm.content and not dm.mention_everyone
    simcord_env.backend.faults.clear()

    # Recovery after a restart: speech the engine finished while the bot was down.
    store = simcord_env.bot.jobs.store  # type: ignore[attr-defined]
    job = await store.create(
        user_id=alice.id,
        guild_id=guild.id,
        channel_id=channel.id,
        kind=JobKind.VOICE_SPEAK,
        params={"voice_id": voice.id, "text": loud + " 4"},
    )
    await store.update(job.id, state=JobState.RUNNING, started_at=utcnow())
    await tada.generate_voice(voice.id, loud + " 4")
    # And one cut off by the restart: posted as interrupted, with Retry.
    cut = await store.create(
        user_id=alice.id,
        guild_id=guild.id,
        channel_id=channel.id,
        kind=JobKind.VOICE_SPEAK,
        params={"voice_id": voice.id, "text": loud + " 5", "voice_name": "@everyone"},
    )
    await store.update(cut.id, state=JobState.RUNNING, started_at=utcnow())
    await simcord_env.restart_bot(create_bot(services))
    await simcord_env.settle()
    job, cut = await store.get(job.id), await store.get(cut.id)
    assert job.state is JobState.FINISHED and job.posted_via is Destination.CHANNEL
    assert cut.state is JobState.INTERRUPTED and cut.posted
    recovered = [m for m in channel.history() if m.id == job.result_message_id]
    assert recovered and not recovered[0].mention_everyone

    assert not any(m.mention_everyone for m in channel.history())
    assert assert_pings_at_most(simcord_env, {alice.id}) >= 6
    _ = simcord_env.errors
