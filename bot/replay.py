"""Past speech, played again: a history entry's audio fetched for the member (privately)
or re-posted in the channel. No Ta-da generation is made, so no quota is used."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from bot.errors import UserFacingError
from bot.tada import TadaClient
from bot.tada.errors import TadaProtocolError
from bot.tada.models import VoiceGeneration


@dataclass(frozen=True, slots=True)
class Replay:
    """A past generation and its audio file."""

    generation: VoiceGeneration
    filename: str
    data: bytes


async def fetch_speech(tada: TadaClient, generation_id: str, *, max_bytes: int) -> Replay:
    """The member's generation ``generation_id`` with its audio (Ta-da checks ownership:
    another member's id answers like a missing one)."""
    generation = await tada.get_voice_generation(generation_id)
    suffix = PurePosixPath(urlsplit(generation.audio_url).path).suffix.lstrip(".")
    filename = f"speech.{generation.format or suffix or 'mp3'}"
    try:
        chunks = [c async for c in tada.iter_download(generation.audio_url, max_bytes=max_bytes)]
    except TadaProtocolError as exc:
        raise UserFacingError(
            "That recording is larger than this server's upload limit, so it cannot be posted here."
        ) from exc
    return Replay(generation, filename, b"".join(chunks))
