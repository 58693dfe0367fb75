"""Tables of the voice package: cloned voices and their generations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from engine.models import Base, new_id, utcnow


class Voice(Base):
    """A voice cloned from one upload; ``profile`` is what the back end learnt."""

    __tablename__ = "voices"
    __table_args__ = (Index("ix_voices_user_created", "user_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # Unique: one upload makes at most one voice, even if two requests race.
    upload_id: Mapped[str | None] = mapped_column(
        ForeignKey("uploads.id", ondelete="SET NULL"), unique=True, nullable=True
    )
    name: Mapped[str] = mapped_column(String(100))
    backend: Mapped[str] = mapped_column(String(32))
    sample_seconds: Mapped[float] = mapped_column(Float)
    speech_seconds: Mapped[float] = mapped_column(Float)
    median_f0_hz: Mapped[float] = mapped_column(Float)
    base_similarity: Mapped[float | None] = mapped_column(Float, nullable=True)
    profile: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class VoiceGeneration(Base):
    """Speech generated in a voice; the audio is an artifact under ``audio_key``."""

    __tablename__ = "voice_generations"
    __table_args__ = (
        Index("ix_voice_generations_user_created", "user_id", "created_at"),
        Index("ix_voice_generations_voice_created", "voice_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    voice_id: Mapped[str] = mapped_column(ForeignKey("voices.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    text: Mapped[str] = mapped_column(Text)
    audio_key: Mapped[str] = mapped_column(String(255))
    audio_format: Mapped[str] = mapped_column(String(8))
    duration_seconds: Mapped[float] = mapped_column(Float)
    # resemblyzer cosine of the generated speech to the voice's sample.
    similarity: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SpeechFingerprint(Base):
    """The acoustic fingerprint of one generation, taken as it was made (who, voice, when
    are the generation's; kept here too so a trace reads one table)."""

    __tablename__ = "speech_fingerprints"
    __table_args__ = (Index("ix_speech_fingerprints_user", "user_id", "created_at"),)

    generation_id: Mapped[str] = mapped_column(
        ForeignKey("voice_generations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    voice_id: Mapped[str] = mapped_column(ForeignKey("voices.id", ondelete="CASCADE"))
    # "chromaprint1": Chromaprint's algorithm 1 through ffmpeg (engine.voice.fingerprint).
    method: Mapped[str] = mapped_column(String(16))
    # Little-endian 32-bit items, one per ~0.124 s of speech.
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
