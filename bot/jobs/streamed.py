"""``/voice say`` on an engine that streams speech: the voice channel hears the speech while
it is made, and the posted file follows once it is complete.

Used by :mod:`bot.jobs.execute` when the job asks to play in a voice channel, this process
can (its player, the guild in its cache) and the API offers the stream extension; otherwise
the speech is made whole and played after it is posted, as before.
"""

from __future__ import annotations

import logging
from typing import Any

import discord

from bot.jobs.models import Job, speech_result
from bot.tada import TadaClient
from bot.voice_channel import Clip, QueueFull, StreamedSpeech, VoiceChannelPlayer

log = logging.getLogger(__name__)


def can_stream(job: Job, client: discord.Client, player: VoiceChannelPlayer | None) -> bool:
    """Whether ``job`` is a ``/voice say`` this process could play while it is made."""
    return (
        job.params.get("play_in") is not None
        and player is not None
        and job.guild_id is not None
        and client.get_guild(job.guild_id) is not None
        and not (job.result or {}).get("played")
    )


async def speak_streamed(
    tada: TadaClient, job: Job, player: VoiceChannelPlayer, *, locale: str | None = None
) -> dict[str, Any]:
    """Stream the speech into the job's voice channel as it arrives; its result once whole
    (marked played, so that delivery posts it without playing it again). ``locale`` (the
    member's Discord locale) is the engine's hint to the text's language."""
    assert job.guild_id is not None
    p = job.params
    source = StreamedSpeech()
    # Queued before the engine is asked: the bot joins the voice channel (a voice gateway
    # handshake) while the first piece is made, and the source gives silence until it comes.
    clip = Clip(b"", int(p["play_in"]), job.user_id, label=f"job {job.id}", stream=source)
    try:
        player.enqueue(job.guild_id, clip)
    except QueueFull:
        log.warning("job %s: the voice queue of guild %s is full", job.id, job.guild_id)
        source.cleanup()
    try:
        async with tada.stream_speech(str(p["voice_id"]), str(p["text"]), locale=locale) as stream:
            # The whole stream is read even when nobody listens any more: it is the speech
            # the engine records, and its end is when the file can be posted.
            async for pcm in stream.pcm():
                await source.feed(pcm, stream.sample_rate)
    finally:
        source.end()  # a refused or broken stream ends the clip too (the player moves on)
    spoken = await tada.get_voice_generation(stream.generation_id)
    return {**speech_result(spoken), "played": True}
