"""``/voice say`` plays a speech while the engine makes it (issue 27, item 3).

SimCord has no voice gateway (see ``test_voice_channel.py``): the command, the job and the
engine's stream run for real, and the voice connection is replaced at discord.py's seam
(``VoiceChannel.connect``) by a client that takes the Opus packets. The source fed by the
stream is tested on its own with the bundled ffmpeg's real Opus.
"""

from __future__ import annotations

import asyncio
import math
import struct
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
from bot.opus_stream import OpusStream
from bot.store import LinkedVia
from bot.tada import TadaClient
from bot.tada.errors import NotFound, TadaProtocolError
from bot.tada.offer import offer_of
from bot.voice_channel import OPUS_SILENCE, StreamedSpeech, encode_opus
from tests.bot.media_samples import speech_wav
from tests.bot.worker_world import bot_config, engine_settings  # noqa: F401
from tests.conftest import register
from tests.waiting import async_wait_until

RATE = 22050


def tone(seconds: float, rate: int = RATE) -> bytes:
    """16-bit mono samples of a 220 Hz tone."""
    n = int(seconds * rate)
    return struct.pack(
        f"<{n}h", *(int(8000 * math.sin(2 * math.pi * 220 * i / rate)) for i in range(n))
    )


def in_process() -> StreamedSpeech:
    assert OpusStream.open() is not None, "libopus is on this machine: in process by default"
    return StreamedSpeech()


def with_ffmpeg() -> StreamedSpeech:
    return StreamedSpeech(encode_opus)


@pytest.mark.parametrize("make", [in_process, with_ffmpeg])
async def test_the_source_plays_what_arrived_and_never_waits_for_the_rest(
    make: Callable[[], StreamedSpeech],
) -> None:
    source = make()
    assert source.is_opus()
    # Nothing yet: silence at once, not a wait (the player thread keeps its 20 ms pace).
    started = time.perf_counter()
    assert source.read() == OPUS_SILENCE
    assert time.perf_counter() - started < 0.005
    await source.feed(tone(0.5), RATE)
    packets = []
    while (packet := source.read()) != OPUS_SILENCE:
        packets.append(packet)
    # 0.5 s of real Opus in 20 ms packets (ffmpeg's look-ahead may add one; in process,
    # the resampler keeps its last 16 samples and a part frame for what comes next), then
    # silence again: caught up with a speech still being made.
    assert 24 <= len(packets) <= 27 and all(packets)
    assert source.first_audio_at is not None
    await source.feed(tone(0.2), RATE)
    source.end()
    more = []
    while packet := source.read():
        more.append(packet)
    assert 10 <= len(more) <= 12 and OPUS_SILENCE not in more
    assert 35 <= len(packets) + len(more) <= 38
    assert source.read() == b""  # the end, once everything fed was played


def heard(packets: list[bytes]) -> list[float]:
    """The level of each 20 ms of the decoded packets (the left channel)."""
    decoder = discord.opus.Decoder()
    levels = []
    for packet in packets:
        pcm = decoder.decode(packet)
        left = struct.unpack(f"<{len(pcm) // 2}h", pcm)[::2]
        levels.append(math.sqrt(sum(v * v for v in left) / len(left)))
    return levels


async def test_blocks_of_any_size_play_as_one_speech_without_gaps() -> None:
    """The stream's blocks are what the socket gave (a piece may come in several): they
    join without a padded frame or a restarted encoder between them."""
    source = StreamedSpeech()
    tone_1s = tone(1.0)
    # Blocks of 31 ms (683 samples, an odd number of bytes' worth of nothing left over).
    block = 683 * 2
    for start in range(0, len(tone_1s), block):
        await source.feed(tone_1s[start : start + block], RATE)
    source.end()
    packets = []
    while packet := source.read():
        packets.append(packet)
    # One second is 50 frames (the last one part silence), not a padded frame per block.
    assert len(packets) in (50, 51)
    # Every 20 ms of the tone is heard at its level (8000 peak: about 5657 RMS), except
    # the encoder's first frame, which starts from nothing.
    levels = heard(packets)
    assert all(4000 < level < 7500 for level in levels[1:49]), levels


async def test_a_skipped_source_takes_no_more_audio() -> None:
    encoded: list[int] = []

    def encode(pcm: bytes, rate: int) -> list[bytes]:
        encoded.append(len(pcm))
        return [b"x"]

    source = StreamedSpeech(encode)
    await source.feed(tone(0.1), RATE)
    source.cleanup()  # the player is done with it (skip, stop)
    await source.feed(tone(0.1), RATE)
    assert len(encoded) == 1 and source.read() == b""


def test_the_offer_names_the_stream_only_where_the_document_has_it() -> None:
    stream: dict[str, Any] = {"paths": {"/api/voices/{voice_id}/speech/stream": {"post": {}}}}
    assert offer_of(stream).speech_stream
    assert not offer_of({"paths": {}}).speech_stream
    assert not offer_of(
        {"paths": {"/api/voices/{voice_id}/speech/stream": {"get": {}}}}
    ).speech_stream


async def test_the_client_reads_the_stream_and_refuses_what_is_not_one() -> None:
    header = (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, RATE, RATE * 2, 2, 16)
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )
    bodies = {
        "v1": [header[:10], header[10:] + b"\x01", b"\x00\x02", b"\x00"],
        "v2": [b"not a wav at all, not at all, not at all, no."],
    }

    async def body(voice: str) -> Any:
        for part in bodies[voice]:
            yield part

    def handler(request: httpx.Request) -> httpx.Response:
        voice = request.url.path.split("/")[3]
        assert request.headers["X-API-Key"] == "k"
        if voice not in bodies:
            return httpx.Response(404, json={"detail": "voice not found"})
        return httpx.Response(200, headers={"X-Generation-Id": "g1"}, content=body(voice))

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        tada = TadaClient(http, base_url="http://engine", api_key=SecretStr("k"))
        async with tada.stream_speech("v1", "Hi.") as stream:
            assert (stream.generation_id, stream.sample_rate) == ("g1", RATE)
            pcm = [c async for c in stream.pcm()]
        # Whole samples only, whatever the chunks: 0x0001, 0x0002, then the odd byte held.
        assert pcm == [b"\x01\x00", b"\x02\x00"]
        with pytest.raises(TadaProtocolError):
            async with tada.stream_speech("v2", "Hi."):
                pass
        with pytest.raises(NotFound):
            async with tada.stream_speech("v3", "Hi."):
                pass


class PacketSink:
    """A connected voice client whose "UDP" takes the Opus packets in real time."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.connected = True
        self.sources: list[discord.AudioSource] = []
        self.packets: list[bytes] = []
        self._playing = False

    def is_connected(self) -> bool:
        return self.connected

    def is_playing(self) -> bool:
        return self._playing

    def play(
        self, source: discord.AudioSource, *, after: Callable[[Exception | None], Any]
    ) -> None:
        assert source.is_opus()
        self.sources.append(source)
        self._playing = True

        def run() -> None:
            while packet := source.read():
                self.packets.append(packet)
                time.sleep(0.002)
            source.cleanup()
            self._playing = False
            after(None)

        threading.Thread(target=run, daemon=True).start()

    def stop(self) -> None:
        pass

    async def disconnect(self, *, force: bool = False) -> None:
        self.connected = False

    async def move_to(self, channel: Any) -> None:
        self.channel = channel


@pytest.mark.simcord(settle_timeout=60)
async def test_voice_say_plays_the_stream_then_posts_the_file(
    simcord_env: simcord.Env,
    services: BotServices,
    api: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
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
    sinks: list[PacketSink] = []
    # What happened first (SimCord's clock stands still: an order, not times).
    happened: list[str] = []

    class Recorded(StreamedSpeech):
        async def feed(self, pcm: bytes, sample_rate: int) -> None:
            happened.append("first piece")
            await super().feed(pcm, sample_rate)

    monkeypatch.setattr("bot.jobs.streamed.StreamedSpeech", Recorded)

    async def connect(channel: Any) -> Any:
        happened.append("joined")
        sinks.append(PacketSink(channel))
        return sinks[-1]

    bot: Any = simcord_env.bot
    bot.voice_player._connect = connect  # discord.py's connect: SimCord has no voice gateway
    await alice.join_voice(room)
    said = await alice.slash(
        text, "voice say", voice=voice.id, text="Hello, lounge. Are you all there?"
    )

    # Posted in the text channel once whole, and heard from the stream, not from the file.
    assert "Hello, lounge." in said.followups[-1].content
    [job] = await bot.jobs.store.for_member(alice.id)
    assert job.state is JobState.FINISHED and job.result["played"]
    await async_wait_until(lambda: bool(sinks) and not sinks[0].is_playing(), "played")
    [sink] = sinks
    assert sink.channel.id == room.id
    [source] = sink.sources
    assert isinstance(source, StreamedSpeech) and source.first_audio_at is not None
    # The bot joined the voice channel while the engine made the first piece, not after.
    assert happened[:2] == ["joined", "first piece"]
    heard = [p for p in sink.packets if p != OPUS_SILENCE]
    seconds = job.result["duration_seconds"]
    assert abs(len(heard) * 0.02 - seconds) < 0.2 * seconds
    # The posted file is the recorded generation the stream made.
    spoken = await tada.get_voice_generation(job.result["generation_id"])
    assert spoken.text == "Hello, lounge. Are you all there?"
    await asyncio.sleep(0)
