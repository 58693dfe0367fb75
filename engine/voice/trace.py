"""Tracing a clip of speech back to the generation that made it.

Generation stores each speech's fingerprint (:func:`fingerprint_row`, called by the
worker's handler); :func:`trace_clip` decodes an uploaded clip (untrusted bytes: through
the confined decoder, :func:`engine.voice.audio.decode`), fingerprints it in several
guesses of how it was changed (:func:`engine.voice.fingerprint.query_variants`) and
compares it with the stored fingerprints in scope: a member's own generations, or every
generation for the engine's operator. It also looks for the watermark every speech of a
Ta-da engine carries (:mod:`engine.voice.watermark`), which needs no stored row: a clip
whose generation was deleted, or was made by another Ta-da engine, is still recognised as
machine-made.

What it cannot catch is measured in bench/trace.py and written for admins in
docs/tracing.md: clips shorter than about 3 s, pitch or speed changed by more than about
3 semitones, speech under louder sound, a person imitating the voice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio.to_thread
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.confine import Confiner
from engine.models import as_utc
from engine.voice.audio import FloatAudio, SampleRejected, decode
from engine.voice.fingerprint import (
    FINGERPRINT_RATE,
    ITEM_SECONDS,
    MIN_OVERLAP,
    Fingerprint,
    FingerprintError,
    Variant,
    best_alignment,
    from_bytes,
    query_plan,
    query_variants,
    to_bytes,
)
from engine.voice.models import SpeechFingerprint, Voice, VoiceGeneration
from engine.voice.piper_base import BaseVoiceError
from engine.voice.watermark import GUESS_THRESHOLD, MARK_THRESHOLD, Detection, Watermarker

log = logging.getLogger(__name__)

METHOD = "chromaprint1"
# What a clip to trace may be: the longest stretch decoded, the most bytes accepted.
MAX_TRACE_SECONDS = 600.0
MAX_TRACE_BYTES = 25 * 1024 * 1024
# The best matches reported (a clip made of pieces of several generations finds each).
MAX_MATCHES = 5
# Fingerprints compared per database read.
_BATCH = 500


class TraceRefused(ValueError):
    """The clip cannot be traced; the message says why, for the member."""


class TraceMatch(BaseModel):
    """One generation the clip was found in."""

    generation_id: str
    voice_id: str
    voice_name: str
    user_id: str | None = Field(
        None, description="The generation's owner (answered to the operator only)"
    )
    created_at: datetime
    score: float = Field(description="Share of equal fingerprint bits (0.5 unrelated, 1 same)")
    offset_seconds: float = Field(description="Where the clip starts in the generation")
    rate: float = Field(description="The playback rate the clip matched best at")
    tempo: float = Field(1.0, description="The time stretch (pitch kept) it matched best at")


class TraceResult(BaseModel):
    """Engine extension (not in the hosted Ta-da API): whether a clip was made here."""

    made_here: bool
    scope: str = Field(description="'own': the caller's generations; 'all': the operator's")
    clip_seconds: float
    searched: int = Field(description="Fingerprints compared")
    matches: list[TraceMatch]
    watermarked: bool | None = Field(
        None,
        description="Whether the clip carries the Ta-da watermark (speech made by a Ta-da "
        "engine, even one whose generation is not here); null: not looked for (the "
        "engine's watermark is off)",
    )
    watermark_score: float | None = Field(
        None,
        description=f"The watermark decoder's confidence, 0..1 (yes above {MARK_THRESHOLD} as "
        f"the clip is, above {GUESS_THRESHOLD} where found at another speed)",
    )


def fingerprint_row(generation: VoiceGeneration, fp: Fingerprint) -> SpeechFingerprint:
    """The fingerprint row of a generation just made."""
    return SpeechFingerprint(
        generation_id=generation.id,
        user_id=generation.user_id,
        voice_id=generation.voice_id,
        method=METHOD,
        fingerprint=to_bytes(fp),
    )


@dataclass(frozen=True)
class _Query:
    variants: list[Fingerprint]
    plan: list[Variant]
    seconds: float
    watermark: Detection | None


def _watermark(watermarker: Watermarker | None, audio: FloatAudio) -> Detection | None:
    if watermarker is None:
        return None
    try:
        return watermarker.find(audio, FINGERPRINT_RATE)
    except BaseVoiceError as exc:  # the fingerprint still answers
        log.warning("trace: the watermark cannot be looked for: %s", exc)
        return None


def _prepare(path: Path, confiner: Confiner | None, watermarker: Watermarker | None) -> _Query:
    """Decode the clip (confined, capped), fingerprint its variants and look for the
    watermark. Blocking."""
    try:
        audio = decode(path, FINGERPRINT_RATE, MAX_TRACE_SECONDS, confiner=confiner)
    except SampleRejected as exc:
        raise TraceRefused(str(exc)) from exc
    seconds = len(audio) / FINGERPRINT_RATE
    try:
        variants = query_variants(audio, FINGERPRINT_RATE, confiner=confiner)
    except FingerprintError as exc:
        raise TraceRefused("the clip could not be fingerprinted; send a shorter one") from exc
    if len(variants[0]) < MIN_OVERLAP:
        raise TraceRefused(
            f"the clip is too short to trace ({seconds:.1f} s); send at least 3 s of speech"
        )
    return _Query(variants, query_plan(), seconds, _watermark(watermarker, audio))


def _compare(query: _Query, rows: Sequence[tuple[str, bytes]]) -> list[tuple[str, float, int, int]]:
    """(generation id, score, offset items, variant index) of each matching row."""
    found = []
    for generation_id, data in rows:
        stored = from_bytes(data)
        best = None
        for i, variant in enumerate(query.variants):
            al = best_alignment([variant], stored)
            if al.matched and (best is None or al.score > best[1]):
                best = (generation_id, al.score, al.offset_items, i)
        if best is not None:
            found.append(best)
    return found


async def trace_clip(
    session: AsyncSession,
    path: Path,
    *,
    user_id: str | None,
    confiner: Confiner | None = None,
    watermarker: Watermarker | None = None,
) -> TraceResult:
    """Whether the clip at ``path`` is (part of) a generation in scope: ``user_id``'s own,
    or every one for ``None`` (the operator); and whether it carries the watermark
    (``watermarker``: ``None`` does not look). Raises :class:`TraceRefused`."""
    query = await anyio.to_thread.run_sync(_prepare, path, confiner, watermarker)
    statement = select(SpeechFingerprint.generation_id, SpeechFingerprint.fingerprint).order_by(
        SpeechFingerprint.created_at.desc()
    )
    if user_id is not None:
        statement = statement.where(SpeechFingerprint.user_id == user_id)
    found: list[tuple[str, float, int, int]] = []
    searched = 0
    result = await session.stream(statement.execution_options(yield_per=_BATCH))
    async for batch in result.partitions(_BATCH):
        rows = [(str(r[0]), bytes(r[1])) for r in batch]
        searched += len(rows)
        found += await anyio.to_thread.run_sync(_compare, query, rows)
    found.sort(key=lambda f: f[1], reverse=True)
    found = found[:MAX_MATCHES]
    matches: list[TraceMatch] = []
    if found:
        ids = [f[0] for f in found]
        rows_by_id = {
            g.id: (g, name)
            for g, name in (
                await session.execute(
                    select(VoiceGeneration, Voice.name)
                    .join(Voice, Voice.id == VoiceGeneration.voice_id)
                    .where(VoiceGeneration.id.in_(ids))
                )
            ).all()
        }
        for generation_id, score, offset, variant in found:
            if generation_id not in rows_by_id:
                continue  # deleted meanwhile
            generation, name = rows_by_id[generation_id]
            matches.append(
                TraceMatch(
                    generation_id=generation_id,
                    voice_id=generation.voice_id,
                    voice_name=name,
                    user_id=generation.user_id if user_id is None else None,
                    created_at=as_utc(generation.created_at),
                    score=round(score, 4),
                    offset_seconds=round(offset * ITEM_SECONDS, 2),
                    rate=round(query.plan[variant].rate, 4),
                    tempo=round(query.plan[variant].tempo, 4),
                )
            )
    return TraceResult(
        made_here=bool(matches),
        scope="own" if user_id is not None else "all",
        clip_seconds=round(query.seconds, 2),
        searched=searched,
        matches=matches,
        watermarked=None if query.watermark is None else query.watermark.marked,
        watermark_score=None if query.watermark is None else query.watermark.score,
    )
