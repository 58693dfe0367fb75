"""Speech as a Discord voice message: OGG/Opus audio, a waveform and a duration on the
attachment, and the ``IS_VOICE_MESSAGE`` flag on the message.

Discord takes voice messages only through Create Message in a channel (not through
interaction follow-ups), with no text, embeds or buttons beside the file, and only where
the bot has Send Voice Messages; everywhere else the speech goes out as an MP3
attachment. ffmpeg (the imageio-ffmpeg wheel's, which has libopus) converts, in a thread.
"""

from __future__ import annotations

import array
import asyncio
import base64
import io
import subprocess
from dataclasses import dataclass
from typing import Any

import discord
from discord.http import handle_message_parameters

from bot.media import ffmpeg_path

# Discord's ``MessageFlags.IS_VOICE_MESSAGE``.
VOICE_MESSAGE_FLAG = 1 << 13
# Discord's clients draw at most 256 bars, about ten a second.
MAX_WAVEFORM_POINTS = 256
POINTS_PER_SECOND = 10
# Mono 16-bit PCM decoded at this rate is plenty for a waveform and an exact duration.
ANALYSIS_RATE = 8000
FFMPEG_TIMEOUT_SECONDS = 120


class VoiceMessageError(Exception):
    """The audio could not be made into a voice message (the MP3 goes out instead)."""


@dataclass(frozen=True, slots=True)
class VoiceMessage:
    """Audio ready to post as a voice message."""

    ogg: bytes
    duration_seconds: float
    waveform: str  # base64 of one byte (0..255) per bar


class VoiceMessageFile(discord.File):
    """An attachment that carries a voice message's duration and waveform."""

    def __init__(self, message: VoiceMessage, filename: str = "voice-message.ogg") -> None:
        super().__init__(io.BytesIO(message.ogg), filename=filename)
        self.duration_seconds = message.duration_seconds
        self.waveform = message.waveform

    def to_dict(self, index: int) -> dict[str, Any]:
        payload = super().to_dict(index)
        payload["duration_secs"] = round(self.duration_seconds, 3)
        payload["waveform"] = self.waveform
        return payload


def _ffmpeg(data: bytes, *args: str) -> bytes:
    proc = subprocess.run(  # our own ffmpeg binary, fixed arguments
        [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-i", "pipe:0", *args, "pipe:1"],
        input=data,
        capture_output=True,
        timeout=FFMPEG_TIMEOUT_SECONDS,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout:
        raise VoiceMessageError(proc.stderr.decode(errors="replace").strip()[:300] or "no output")
    return proc.stdout


def waveform_of(samples: array.array[int], points: int) -> bytes:
    """One byte per bar: the peak of that stretch of ``samples`` (16-bit), scaled to
    0..255 against the loudest peak."""
    if not samples or points <= 0:
        return bytes(max(1, points))
    size = max(1, len(samples) // points)
    peaks = [
        max((abs(s) for s in samples[i * size : (i + 1) * size]), default=0) for i in range(points)
    ]
    top = max(peaks) or 1
    return bytes(min(255, round(p * 255 / top)) for p in peaks)


def make_voice_message(audio: bytes) -> VoiceMessage:
    """Convert ``audio`` (any format ffmpeg reads) to a voice message; blocking."""
    ogg = _ffmpeg(
        audio, "-vn", "-ac", "1", "-ar", "48000", "-c:a", "libopus", "-b:a", "64k", "-f", "ogg"
    )
    raw = _ffmpeg(audio, "-vn", "-ac", "1", "-ar", str(ANALYSIS_RATE), "-f", "s16le")
    samples = array.array("h")
    samples.frombytes(raw[: len(raw) - len(raw) % 2])
    duration = len(samples) / ANALYSIS_RATE
    if duration <= 0:
        raise VoiceMessageError("the audio is empty")
    points = max(1, min(MAX_WAVEFORM_POINTS, round(duration * POINTS_PER_SECOND)))
    waveform = base64.b64encode(waveform_of(samples, points)).decode()
    return VoiceMessage(ogg=ogg, duration_seconds=duration, waveform=waveform)


async def make_voice_message_async(audio: bytes) -> VoiceMessage:
    """:func:`make_voice_message` off the event loop."""
    return await asyncio.to_thread(make_voice_message, audio)


async def post_voice_message(
    client: discord.Client,
    channel_id: int,
    message: VoiceMessage,
) -> int:
    """Post ``message`` in the channel as a voice message; the new message's id.

    discord.py's ``send`` cannot set the voice flag, so the message goes through its HTTP
    client with the same multipart parameters ``send`` builds.
    """
    flags = discord.MessageFlags(voice=True)
    with handle_message_parameters(
        file=VoiceMessageFile(message),
        flags=flags,
        allowed_mentions=discord.AllowedMentions.none(),
    ) as params:
        data = await client.http.send_message(channel_id, params=params)
    return int(data["id"])
