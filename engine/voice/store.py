"""Async reads of voices and generations for the API; every read is scoped to one user."""

from __future__ import annotations

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.voice.models import Voice, VoiceGeneration

# Built once, run with parameters: building the expression costs more than the read.
_VOICES_OF = (
    select(Voice)
    .where(Voice.user_id == bindparam("user_id"))
    .order_by(Voice.created_at.desc(), Voice.id)
)


async def list_voices(session: AsyncSession, user_id: str) -> list[Voice]:
    return list(await session.scalars(_VOICES_OF, {"user_id": user_id}))


async def get_voice(session: AsyncSession, user_id: str, voice_id: str) -> Voice | None:
    """The caller's voice, or None (another user's id looks like no id)."""
    voice = await session.get(Voice, voice_id)
    return voice if voice is not None and voice.user_id == user_id else None


async def get_generation(
    session: AsyncSession, user_id: str, generation_id: str
) -> VoiceGeneration | None:
    generation = await session.get(VoiceGeneration, generation_id)
    return generation if generation is not None and generation.user_id == user_id else None


async def page_generations(
    session: AsyncSession,
    user_id: str,
    *,
    voice_id: str | None,
    limit: int,
    offset: int,
) -> tuple[list[VoiceGeneration], int]:
    """One page of the caller's generations (of one voice, or all), newest first, and the total."""
    where = [VoiceGeneration.user_id == user_id]
    if voice_id is not None:
        where.append(VoiceGeneration.voice_id == voice_id)
    total = await session.scalar(select(func.count()).select_from(VoiceGeneration).where(*where))
    rows = await session.scalars(
        select(VoiceGeneration)
        .where(*where)
        .order_by(VoiceGeneration.created_at.desc(), VoiceGeneration.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(rows), int(total or 0)
