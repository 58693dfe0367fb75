"""``/voice say``: speech played in the member's voice channel, a queue per guild, skip,
stop, leaving when idle (issue 15, voice-bot features).

SimCord models voice *states* (who is in which voice channel) but not the bot's voice
connection: its gateway has no voice-state update (op 4), so no VOICE_SERVER_UPDATE, no
voice websocket, no UDP/RTP/Opus stream, no DAVE. So the commands, the checks and the
job run in SimCord, and the player runs on real discord.py audio sources (the bundled
ffmpeg encodes real Opus packets) with the transport replaced at discord.py's own seam,
``VoiceChannel.connect(cls=...)``, by a voice client that consumes the packets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import discord
import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import BotServices
from bot.jobs import JobState
from bot.store import LinkedVia
from bot.voice_channel import Clip, VoiceChannelPlayer
from tests.bot.media_samples import speech_wav
from tests.bot.worker_world import bot_config, engine_settings  # noqa: F401
from tests.conftest import register
from tests.waiting import async_wait_until

pytestmark = pytest.mark.simcord(settle_timeout=60)


class PacketSink:
    """A connected voice client whose "UDP" takes the Opus packets as fast as they come."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.connected = True
        self.packets: list[int] = []  # per clip played
        self._playing = False
        self._stop = threading.Event()

    def is_connected(self) -> bool:
        return self.connected

    def is_playing(self) -> bool:
        return self._playing

    def play(
        self, source: discord.AudioSource, *, after: Callable[[Exception | None], Any]
    ) -> None:
        assert source.is_opus()  # no encoder (and no system libopus) needed
        self._playing = True

        def run() -> None:
            count = 0
            while not self._stop.is_set() and source.read():
                count += 1
                if count % 50 == 0:
                    time.sleep(0.01)  # a little like real time, so skip can land
            source.cleanup()
            self.packets.append(count)
            self._playing = False
            self._stop.clear()
            after(None)

        threading.Thread(target=run, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    async def disconnect(self, *, force: bool = False) -> None:
        self.connected = False

    async def move_to(self, channel: Any) -> None:
        self.channel = channel


async def wait_for(check: Callable[[], bool]) -> None:
    await async_wait_until(check, "the voice channel's state")


async def test_say_in_a_server_without_voice_channels_says_it_cannot(
    simcord_env: simcord.Env,
) -> None:
    # The sandbox's simulated server is one: it has text channels only.
    guild = simcord_env.create_guild()
    text = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))

    refused = await alice.slash(text, "voice say", voice="v" * 32, text="Hello.")

    assert refused.ephemeral and refused.response is not None
    assert refused.response.content.startswith("This server has no voice channel")
    assert "`/voice speak` posts the speech here instead" in refused.response.content
    assert not refused.followups and text.history() == []
    _ = simcord_env.errors


async def test_say_needs_a_voice_channel_then_queues_the_speech_there(
    simcord_env: simcord.Env,
    services: BotServices,
    api: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    guild = simcord_env.create_guild()
    text = guild.create_text_channel("general")
    room = guild.create_voice_channel("Lounge")
    alice = guild.add_member(simcord_env.create_user("alice"))
    key = SecretStr(await register(api, "alice@example.com"))
    await services.members.save(alice.id, key, via=LinkedVia.LINK)
    tada = services.tada.with_key(key)
    target = await tada.create_voice_upload_url("Alice", "alice.wav")
    await tada.put_upload(target, await speech_wav())
    voice = await tada.create_voice(target.upload_id)

    refused = await alice.slash(text, "voice say", voice=voice.id, text="Hello.")
    assert refused.ephemeral and refused.response is not None
    assert "Join a voice channel first" in refused.response.content
    _ = simcord_env.errors

    runner = simcord_env.bot.jobs  # type: ignore[attr-defined]
    await alice.join_voice(room)
    caplog.set_level(logging.INFO, logger="bot.voice_channel")
    said = await alice.slash(text, "voice say", voice=voice.id, text="Hello, lounge.")

    # Posted in the text channel as usual, and queued for Alice's voice channel.
    assert "Hello, lounge." in said.followups[-1].content
    [job] = await runner.store.for_member(alice.id)
    assert job.state is JobState.FINISHED and job.params["play_in"] == room.id
    assert job.result is not None and job.result["played"]
    # discord.py's real connect runs (PyNaCl and davey are installed) and reaches what
    # SimCord does not model: the voice-state update on the gateway. The clip is dropped
    # with a warning; nothing is left stuck.
    await wait_for(lambda: "could not play" in caplog.text)
    assert "voice_state" in caplog.text
    assert runner.player.waiting(guild.id) == 0
    stopped = await alice.slash(text, "voice stop")
    assert stopped.response is not None and stopped.ephemeral


async def test_the_queue_plays_in_order_skips_and_stops(
    simcord_env: simcord.Env, services: BotServices
) -> None:
    guild = simcord_env.create_guild()
    room = guild.create_voice_channel("Lounge")
    sinks: list[PacketSink] = []

    async def connect(channel: Any) -> Any:
        sinks.append(PacketSink(channel))
        return sinks[-1]

    player = VoiceChannelPlayer(simcord_env.bot, connect=connect, idle_seconds=30)
    wav = await speech_wav()
    short = wav[:44] + wav[44 : 44 + 22050]  # about half a second (header sizes aside)
    assert player.enqueue(guild.id, Clip(wav, room.id, 1, "long")) == 1
    assert player.enqueue(guild.id, Clip(short, room.id, 1, "short")) == 2
    await wait_for(lambda: bool(sinks) and sinks[0].is_playing())
    assert player.skip(guild.id)  # the long one is cut short
    await wait_for(lambda: len(sinks[0].packets) == 2)
    long_packets, short_packets = sinks[0].packets
    full = (len(wav) - 44) / (2 * 22050) / 0.02
    assert long_packets < full * 0.9 and short_packets > 0
    assert len(sinks) == 1  # one connection for the whole queue
    assert await player.stop(guild.id) and not sinks[0].connected
    assert not await player.stop(guild.id) and player.waiting(guild.id) == 0

    # With nothing more to say for a while, the bot leaves by itself.
    idle = VoiceChannelPlayer(simcord_env.bot, connect=connect, idle_seconds=0.2)
    idle.enqueue(guild.id, Clip(short, room.id, 1, "short"))
    await wait_for(lambda: len(sinks) == 2 and bool(sinks[1].packets))
    await wait_for(lambda: not sinks[1].connected)
