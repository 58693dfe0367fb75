"""Tables of the image back end: LoRA trainings and image generations."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from engine.models import Base, new_id, utcnow


class LoraTrainingRow(Base):
    """One training per LoRA upload; its status and progress live on the job row."""

    __tablename__ = "lora_trainings"
    __table_args__ = (Index("ix_lora_trainings_user", "user_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    upload_id: Mapped[str] = mapped_column(
        ForeignKey("uploads.id", ondelete="CASCADE"), unique=True
    )
    # Null only for the instant between the row and its job being created.
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True
    )
    trigger_word: Mapped[str] = mapped_column(String(50))
    # Storage key of the trained safetensors file, set by the worker when it is saved.
    lora_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The validation image of the latest checkpoint (storage key) and its training step.
    validation_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    validation_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class LoraGenerationRow(Base):
    """One generated image, with a LoRA of the member's or a demo model."""

    __tablename__ = "lora_generations"
    __table_args__ = (
        Index("ix_lora_generations_user", "user_id", "created_at"),
        Index("ix_lora_generations_training", "training_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    training_id: Mapped[str | None] = mapped_column(
        ForeignKey("lora_trainings.id", ondelete="CASCADE"), nullable=True
    )
    upload_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    demo: Mapped[str | None] = mapped_column(String(32), nullable=True)
    prompt: Mapped[str] = mapped_column(Text)
    enhanced_prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text)
    enhancer: Mapped[str] = mapped_column(String(32))
    seed: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(255))
    image_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The generation this one varies (same prompt, new seed); an id of the same member.
    variation_of: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # The image this one was made from by img2img (an upscale or a variation), of the same
    # member, and which of those it is (an ``ImageOperation`` value).
    parent_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    operation: Mapped[str | None] = mapped_column(String(16), nullable=True)
