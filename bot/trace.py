"""``/tada-admin trace``: was this clip of speech made with the bot, by whom, where?

The engine answers which generation a clip is (part of), as its operator
(``POST /api/trace/speech``, an engine extension; it decodes the clip confined: the bytes
are untrusted); the bot's own job records (:class:`~bot.store.models.JobRow`, whose
``tada_id`` is the generation's id) say which member asked for it and in which channel.
A server's admins learn the member and channel only of speech made in their own server;
of speech made elsewhere they learn that it was made with this bot, and when.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from pydantic import SecretStr
from sqlalchemy import select

from bot.errors import UserFacingError
from bot.jobs.models import JobKind
from bot.media import AUDIO_SUFFIXES, MAX_AUDIO_BYTES, suffix_of
from bot.store.db import Store
from bot.store.models import JobRow
from bot.tada.client import TadaClient
from bot.tada.errors import (
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    TadaError,
    Unauthorized,
)
from bot.tada.models import TraceAnswer

log = logging.getLogger(__name__)


class TraceUnavailable(UserFacingError):
    """This bot's Ta-da API cannot trace speech."""

    default_reason = "trace_unavailable"


@dataclass(frozen=True)
class TracedSpeech:
    """One generation the clip was found in, with what the bot knows of it."""

    generation_id: str
    voice_name: str
    made_at: datetime
    score: float
    # From the bot's job record, when the speech was made in the asking server.
    member_id: int | None = None
    channel_id: int | None = None
    # Made with this bot in another server (or in a DM): who and where stay private.
    elsewhere: bool = False


@dataclass(frozen=True)
class TraceReport:
    """The answer to one trace."""

    made_here: bool
    clip_seconds: float
    matches: tuple[TracedSpeech, ...]
    # Whether the clip carries the Ta-da watermark (machine-made by a Ta-da engine, even
    # one whose generation is not found); None: the engine did not look.
    watermarked: bool | None = None
    watermark_score: float | None = None


def check_clip(file_name: str, size: int) -> None:
    """Cheap checks before the clip's bytes are read (the engine decodes it, confined)."""
    if suffix_of(file_name) not in AUDIO_SUFFIXES:
        raise UserFacingError(
            f"`{file_name}` is not an audio file I can trace ({', '.join(sorted(AUDIO_SUFFIXES))})."
        )
    if size > MAX_AUDIO_BYTES:
        raise UserFacingError(f"That clip is over {MAX_AUDIO_BYTES // (1024 * 1024)} MB.")
    if size == 0:
        raise UserFacingError("That file is empty.")


class SpeechTracer:
    """Traces clips through the engine as its operator, and names them from job records."""

    def __init__(self, tada: TadaClient, store: Store, operator_token: SecretStr | None) -> None:
        self._tada = tada
        self._store = store
        self._token = operator_token

    def __repr__(self) -> str:
        return f"<SpeechTracer {'ready' if self._token else 'off'}>"

    @property
    def available(self) -> bool:
        """Whether the engine's operator token is known (embedded engine, or configured)."""
        return self._token is not None

    async def trace(self, guild_id: int, audio: bytes) -> TraceReport:
        """Trace ``audio`` among every generation; raises :class:`UserFacingError`."""
        if self._token is None:
            raise TraceUnavailable(
                "Tracing needs the bot's own Ta-da engine: with an outside engine, set "
                "TADA_ENGINE_OPERATOR_TOKEN for the bot to that engine's operator token."
            )
        try:
            answer = await self._tada.trace_speech(audio, operator_token=self._token)
        except NotFound as exc:
            raise TraceUnavailable(
                "This bot's Ta-da API cannot trace speech (only the self-hosted engine can)."
            ) from exc
        except Unauthorized as exc:
            log.warning("trace: the engine refused the operator token")
            raise TraceUnavailable(
                "The engine refused the bot's operator token; the bot's operator must set "
                "TADA_ENGINE_OPERATOR_TOKEN to the engine's."
            ) from exc
        except InvalidRequest as exc:
            why = "; ".join(str(e.get("msg", "")) for e in exc.errors) or exc.message
            raise UserFacingError(f"I cannot trace that clip: {why}") from exc
        except PayloadTooLarge as exc:
            raise UserFacingError(f"I cannot trace that clip: {exc.message}") from exc
        except TadaError as exc:
            log.warning("trace failed: %s", exc)
            raise UserFacingError(
                "The Ta-da engine could not trace the clip just now; try again in a minute."
            ) from exc
        return await self._named(guild_id, answer)

    async def _named(self, guild_id: int, answer: TraceAnswer) -> TraceReport:
        ids = [m.generation_id for m in answer.matches]
        jobs: dict[str, JobRow] = {}
        if ids:
            async with self._store.session() as session:
                rows = await session.scalars(
                    select(JobRow).where(
                        JobRow.tada_id.in_(ids), JobRow.kind == JobKind.VOICE_SPEAK.value
                    )
                )
                jobs = {str(row.tada_id): row for row in rows}
        found = []
        for match in answer.matches:
            job = jobs.get(match.generation_id)
            here = job is not None and job.guild_id == guild_id
            found.append(
                TracedSpeech(
                    generation_id=match.generation_id,
                    voice_name=match.voice_name,
                    made_at=match.created_at,
                    score=match.score,
                    member_id=job.discord_user_id if here and job is not None else None,
                    channel_id=job.channel_id if here and job is not None else None,
                    elsewhere=not here,
                )
            )
        return TraceReport(
            answer.made_here,
            answer.clip_seconds,
            tuple(found),
            watermarked=answer.watermarked,
            watermark_score=answer.watermark_score,
        )
