"""Speech played in voice channels: one queue per guild, skip and stop, and the bot
leaves when it has been idle a while.

The bot joins the member's voice channel through discord.py (``VoiceChannel.connect``;
PyNaCl and davey are what discord.py's voice needs) and plays each clip with
``FFmpegOpusAudio`` (the imageio-ffmpeg wheel's ffmpeg encodes Opus, so no system libopus
is needed). A clip that cannot be played is skipped with a warning in the log; the
speech itself was already posted in the text channel.

A speech that is still being made (the engine's speech stream) plays as it arrives: a
:class:`StreamedSpeech` source takes each block of samples, encodes it to Opus in a thread
(in this process with discord.py's libopus, :mod:`bot.opus_stream`; where libopus is
missing, with ffmpeg, one process per block), and hands the packets to discord.py's player
thread as they are encoded; while the next block is being made the player gets Opus
silence, so it never waits (nor blocks the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import subprocess
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import discord
from discord.oggparse import OggStream

from bot.media import ffmpeg_path
from bot.opus_stream import OpusStream

log = logging.getLogger(__name__)

# Leave a voice channel after this long with nothing to say.
IDLE_SECONDS = 120.0
# At most this many clips wait per guild; more are refused.
MAX_QUEUE = 20

Connect = Callable[[discord.VoiceChannel | discord.StageChannel], Awaitable[discord.VoiceClient]]


# One 20 ms Opus frame of silence: what the player sends while a streamed speech waits.
OPUS_SILENCE = b"\xf8\xff\xfe"
_OPUS_HEADERS = (b"OpusHead", b"OpusTags")
# ffmpeg's encoding of one block must not hang a worker thread.
_ENCODE_TIMEOUT_S = 30.0


def encode_opus(pcm: bytes, sample_rate: int) -> list[bytes]:
    """16-bit mono samples as Discord's Opus packets (48 kHz stereo, 20 ms each), with the
    bundled ffmpeg (blocking: call it in a thread)."""
    args = [
        ffmpeg_path(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "s16le",
        "-ar",
        str(sample_rate),
        "-ac",
        "1",
        "-i",
        "pipe:0",
        "-map_metadata",
        "-1",
        "-c:a",
        "libopus",
        "-b:a",
        "96k",
        "-ar",
        "48000",
        "-ac",
        "2",
        "-frame_duration",
        "20",
        "-f",
        "opus",
        "pipe:1",
    ]
    done = subprocess.run(args, input=pcm, capture_output=True, timeout=_ENCODE_TIMEOUT_S)
    if done.returncode != 0:
        raise OSError(f"ffmpeg could not encode speech: {done.stderr[-200:]!r}")
    packets = OggStream(io.BytesIO(done.stdout)).iter_packets()
    return [p for p in packets if not p.startswith(_OPUS_HEADERS)]


class StreamedSpeech(discord.AudioSource):
    """Opus packets of a speech still arriving: :meth:`feed` adds samples (encoded in a
    thread), :meth:`end` says there are no more. :meth:`read` never waits: it gives
    :data:`OPUS_SILENCE` until the next packet is there, and ``b""`` (the end) once
    everything fed has been read after :meth:`end`.

    ``encode`` turns a block of 16-bit mono samples into packets and ``flush`` gives the
    last ones at the end; by default one :class:`~bot.opus_stream.OpusStream` (in this
    process), else :func:`encode_opus` (ffmpeg, block by block)."""

    def __init__(
        self,
        encode: Callable[[bytes, int], Iterable[bytes]] | None = None,
        flush: Callable[[], Iterable[bytes]] | None = None,
    ) -> None:
        # Chosen at the first block, in its thread (loading libopus looks for it on disk).
        self._encode = encode
        self._flush = flush
        # One encoding at a time (the encoder keeps state between blocks).
        self._encoding = threading.Lock()
        self._packets: deque[bytes] = deque()
        self._ended = threading.Event()
        self._closed = threading.Event()
        self.created_at = time.monotonic()
        # When the first samples came (the engine's first piece), and when the player took
        # the first packet of speech (the latency a member hears).
        self.first_fed_at: float | None = None
        self.first_audio_at: float | None = None

    @property
    def closed(self) -> bool:
        """Whether the player is done with it (played to the end, skipped or stopped)."""
        return self._closed.is_set()

    async def feed(self, pcm: bytes, sample_rate: int) -> None:
        """Queue 16-bit mono samples; nothing once the player is done with the source."""
        if not pcm or self.closed:
            return
        if self.first_fed_at is None:
            self.first_fed_at = time.monotonic()
        await asyncio.to_thread(self._encode_blocking, pcm, sample_rate)

    def _encode_blocking(self, pcm: bytes, sample_rate: int) -> None:
        with self._encoding:
            if self._encode is None:
                opus = OpusStream.open()
                if opus is None:
                    self._encode = encode_opus
                else:
                    self._encode, self._flush = opus.encode, opus.flush
            for packet in self._encode(pcm, sample_rate):
                if self.closed:  # skipped or stopped: nobody will hear the rest
                    return
                self._packets.append(packet)  # the player may take it at once

    def end(self) -> None:
        """No more samples will come (the encoder's last packets are queued)."""
        # Without waiting: a feed still encoding (its task cancelled) keeps the encoder,
        # and the last few milliseconds are dropped rather than the event loop held.
        if self._flush is not None and not self.closed and self._encoding.acquire(False):
            try:
                self._packets.extend(self._flush())
            except Exception:  # the end of a speech is not worth failing its clip for
                log.warning("could not encode the end of a streamed speech", exc_info=True)
            finally:
                self._encoding.release()
        self._ended.set()

    def is_opus(self) -> bool:
        return True

    def read(self) -> bytes:
        # ``end`` comes after the last ``feed``: looked at first, no packet is missed.
        ended = self._ended.is_set()
        try:
            packet = self._packets.popleft()
        except IndexError:
            return b"" if ended or self.closed else OPUS_SILENCE
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        return packet

    def cleanup(self) -> None:
        self._closed.set()
        self._packets.clear()


@dataclass(frozen=True, slots=True)
class Clip:
    """One speech to play: its audio (or its stream), where, and for whom (for the log)."""

    audio: bytes
    channel_id: int
    user_id: int
    label: str = ""
    stream: StreamedSpeech | None = None


@dataclass
class _Guild:
    clips: deque[Clip] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    idle: asyncio.TimerHandle | None = None
    voice: discord.VoiceClient | None = None


class QueueFull(Exception):
    """The guild's queue has :data:`MAX_QUEUE` clips waiting."""


async def _connect(channel: discord.VoiceChannel | discord.StageChannel) -> discord.VoiceClient:
    return await channel.connect(self_deaf=True)


def _source(clip: Clip) -> discord.AudioSource:
    if clip.stream is not None:
        return clip.stream
    return discord.FFmpegOpusAudio(
        io.BytesIO(clip.audio),
        pipe=True,
        executable=ffmpeg_path(),
        before_options="-hide_banner -loglevel error",
    )


class VoiceChannelPlayer:
    """Plays clips in voice channels, guild by guild, in the order they came."""

    def __init__(
        self,
        client: discord.Client,
        *,
        idle_seconds: float = IDLE_SECONDS,
        connect: Connect = _connect,
        source: Callable[[Clip], discord.AudioSource] = _source,
    ) -> None:
        self.client = client
        self.idle_seconds = idle_seconds
        self._connect = connect
        self._source = source
        self._guilds: dict[int, _Guild] = {}

    def __repr__(self) -> str:
        return f"<VoiceChannelPlayer guilds={len(self._guilds)}>"

    def waiting(self, guild_id: int) -> int:
        """How many clips wait in the guild (not counting the one playing)."""
        guild = self._guilds.get(guild_id)
        return len(guild.clips) if guild else 0

    def enqueue(self, guild_id: int, clip: Clip) -> int:
        """Queue ``clip``; its place (1 = next). Raises :class:`QueueFull`."""
        guild = self._guilds.setdefault(guild_id, _Guild())
        if len(guild.clips) >= MAX_QUEUE:
            raise QueueFull(guild_id)
        guild.clips.append(clip)
        if guild.task is None or guild.task.done():
            guild.task = asyncio.get_running_loop().create_task(
                self._run(guild_id, guild), name=f"tada-voice {guild_id}"
            )
        return len(guild.clips)

    def skip(self, guild_id: int) -> bool:
        """Stop the clip playing now (the next one starts); whether one was playing."""
        guild = self._guilds.get(guild_id)
        if guild is None or guild.voice is None or not guild.voice.is_playing():
            return False
        guild.voice.stop()
        return True

    async def stop(self, guild_id: int) -> bool:
        """Drop the queue, stop playing and leave; whether the bot was in a voice channel."""
        guild = self._guilds.pop(guild_id, None)
        if guild is None:
            return False
        for waiting in guild.clips:
            if waiting.stream is not None:
                waiting.stream.cleanup()
        guild.clips.clear()
        was_in = guild.voice is not None
        if guild.idle is not None:
            guild.idle.cancel()
        if guild.task is not None:
            guild.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await guild.task
        await self._leave(guild)
        return was_in

    async def close(self) -> None:
        """Leave every voice channel (bot shutdown)."""
        for guild_id in list(self._guilds):
            await self.stop(guild_id)

    async def _leave(self, guild: _Guild) -> None:
        if guild.voice is not None:
            with contextlib.suppress(Exception):
                await guild.voice.disconnect(force=True)
            guild.voice = None

    async def _run(self, guild_id: int, guild: _Guild) -> None:
        """Play the guild's clips in order; then stay connected ``idle_seconds`` (a timer,
        cancelled by the next clip) before leaving."""
        if guild.idle is not None:
            guild.idle.cancel()
            guild.idle = None
        try:
            while guild.clips:
                clip = guild.clips.popleft()
                try:
                    await self._play(guild, clip)
                except Exception:  # one clip's failure must not stop the queue
                    log.warning("guild %s: could not play %s", guild_id, clip.label, exc_info=True)
                finally:
                    if clip.stream is not None:
                        clip.stream.cleanup()  # its feeder stops encoding what none will hear
        except asyncio.CancelledError:
            await self._leave(guild)
            raise
        if guild.voice is None or not guild.voice.is_connected():
            await self._leave(guild)
            if self._guilds.get(guild_id) is guild and not guild.clips:
                self._guilds.pop(guild_id, None)
            return
        loop = asyncio.get_running_loop()
        guild.idle = loop.call_later(
            self.idle_seconds,
            lambda: loop.create_task(self._leave_if_idle(guild_id, guild)),
        )

    async def _leave_if_idle(self, guild_id: int, guild: _Guild) -> None:
        guild.idle = None
        if guild.clips or (guild.task is not None and not guild.task.done()):
            return
        log.info("guild %s: idle in voice, leaving", guild_id)
        await self._leave(guild)
        if self._guilds.get(guild_id) is guild:
            self._guilds.pop(guild_id, None)

    async def _play(self, guild: _Guild, clip: Clip) -> None:
        channel = self.client.get_channel(clip.channel_id)
        if not isinstance(channel, discord.VoiceChannel | discord.StageChannel):
            raise LookupError(f"voice channel {clip.channel_id} is gone")
        if guild.voice is None or not guild.voice.is_connected():
            guild.voice = await self._connect(channel)
        elif guild.voice.channel.id != channel.id:
            await guild.voice.move_to(channel)
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def finished(error: Exception | None) -> None:
            if error is not None:
                log.warning("voice playback ended with %s", error)
            loop.call_soon_threadsafe(done.set)

        guild.voice.play(self._source(clip), after=finished)
        await done.wait()
