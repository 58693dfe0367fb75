"""How a job's outcome looks on Discord: text, embed, files and buttons, within Discord's limits."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import discord

from bot.jobs.buttons import (
    AgainButton,
    DeleteButton,
    EmojiButton,
    GenerateButton,
    SeedButton,
    SoundboardButton,
    StickerButton,
    UpscaleButton,
    VaryButton,
    VaryStrongButton,
    VarySubtleButton,
)
from bot.jobs.images import image_fields, parent_lead
from bot.jobs.models import Job, JobKind, JobState
from bot.messages import (
    CONTENT_LIMIT,
    EMBED_DESCRIPTION_LIMIT,
    EMBED_FIELD_LIMIT,
    EMBED_TITLE_LIMIT,
    clip,
)
from bot.names import visible
from bot.readiness import is_test_model
from bot.tada.models import LoraTraining, TrainingStatus

BAR_WIDTH = 20


# Under an image the engine drew with its built-in random-weight model: it is noise.
TEST_MODEL_NOTE = (
    "ℹ️ This Ta-da engine has no real image model configured: this image comes from its "
    "built-in random test model, so it is noise. The server admins can see this in "
    "`/tada-admin show`."
)


@dataclass(frozen=True)
class Outgoing:
    """A message to post; files are bytes so every attempt can rebuild ``discord.File``."""

    content: str
    embed: discord.Embed | None = None
    files: tuple[tuple[str, bytes], ...] = ()
    items: tuple[discord.ui.Item[Any], ...] = field(default_factory=tuple)

    def view(self) -> discord.ui.View | None:
        """A fresh persistent view holding the buttons (``None`` without buttons)."""
        if not self.items:
            return None
        view = discord.ui.View(timeout=None)
        for item in self.items:
            view.add_item(item)
        return view

    def discord_files(self) -> list[discord.File]:
        """New ``discord.File`` objects (each can be sent once)."""
        return [discord.File(io.BytesIO(data), filename=name) for name, data in self.files]


def progress_bar(fraction: float) -> str:
    """``[██████░░░░] 60%``."""
    fraction = min(1.0, max(0.0, fraction))
    full = round(fraction * BAR_WIDTH)
    return f"`[{'█' * full}{'░' * (BAR_WIDTH - full)}]` {round(fraction * 100)}%"


def progress_fraction(training: LoraTraining) -> float:
    """Progress as 0..1 whether the API reports 0..1 or 0..100 (an integer is always a
    percentage: our engine's 1 is 1%, early in a long training, not 100%)."""
    value = training.progress or 0
    return value / 100.0 if isinstance(value, int) or value > 1.0 else value


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def training_progress(job: Job, training: LoraTraining, now: datetime) -> str:
    """The live progress message of a training: status, bar, elapsed, estimate."""
    name = visible(str(job.params.get("name") or "your LoRA"))
    status = training.state
    started = training.started_at or job.started_at or job.created_at
    elapsed = (now - started).total_seconds() if started else 0.0
    fraction = progress_fraction(training)
    lines = [f"🧪 Training **{clip(str(name), 100)}** for <@{job.user_id}>"]
    if status in (None, TrainingStatus.STARTING):
        lines.append("Status: waiting for a free GPU…")
    elif status is TrainingStatus.PROCESSING:
        lines.append("Status: training")
    elif status is TrainingStatus.SUCCEEDED:
        lines.append("Status: ✅ done")
        fraction = 1.0
    elif status is TrainingStatus.FAILED:
        lines.append(f"Status: ❌ failed: {clip(training.error or 'no reason given', 500)}")
    else:
        lines.append(f"Status: {training.status}")
    lines.append(progress_bar(fraction))
    lines.append(f"Elapsed: {_duration(elapsed)}")
    if status is TrainingStatus.PROCESSING and 0.02 <= fraction < 1.0 and elapsed > 0:
        remaining = elapsed / fraction * (1.0 - fraction)
        lines.append(f"Estimated time left: about {_duration(remaining)}")
    return "\n".join(lines)


@dataclass(frozen=True)
class ProgressImage:
    """A training's validation image, downloaded: shown under its progress message."""

    filename: str
    data: bytes
    step: int | None

    def embed(self) -> discord.Embed:
        """The embed that shows the attached image, captioned with its step."""
        caption = "Validation image" + (f", step {self.step}" if self.step is not None else "")
        embed = discord.Embed(description=caption)
        embed.set_image(url=f"attachment://{self.filename}")
        return embed

    def file(self) -> discord.File:
        """A new ``discord.File`` (each can be sent once)."""
        return discord.File(io.BytesIO(self.data), filename=self.filename)


def stopped_progress(job: Job) -> str:
    """The final progress message of a training the bot could no longer follow."""
    name = visible(str(job.params.get("name") or "your LoRA"))
    reason = clip(job.error or "no reason given", 500)
    return (
        f"🧪 Training **{clip(str(name), 100)}** for <@{job.user_id}>\nStatus: ❌ stopped: {reason}"
    )


def _prompt_embed(title: str, prompt: str, enhanced: str | None) -> discord.Embed:
    embed = discord.Embed(
        title=clip(title, EMBED_TITLE_LIMIT),
        description=clip(f"**Prompt:** {prompt}", EMBED_DESCRIPTION_LIMIT),
    )
    if enhanced and enhanced != prompt:
        embed.add_field(
            name="Enhanced prompt", value=clip(enhanced, EMBED_FIELD_LIMIT), inline=False
        )
    return embed


def likeness_line(score: Any, words: Any, base_score: Any) -> str:
    """The calibrated likeness of speech (0% = a stranger, 100% = the same person), with the
    base voice's beside it; nothing when the API gives no calibrated figure (a raw cosine
    reads about 60% for a stranger, which flatters)."""
    if not isinstance(score, int):
        return ""
    said = f" ({words})" if words else ""
    base = f" · the voice before cloning: {base_score}%" if isinstance(base_score, int) else ""
    return f"\nLikeness to your sample: **{score}%**{said}{base}"


def render(
    job: Job,
    files: tuple[tuple[str, bytes], ...],
    note: str | None = None,
    *,
    expressions: bool = False,
) -> Outgoing:
    """What to post for a final job (``files``: the downloaded artifacts, if any;
    ``expressions``: the server lets results become soundboard sounds, emoji, stickers)."""
    mention = f"<@{job.user_id}>"
    owner = job.user_id
    p = job.params
    result = job.result or {}
    extra = f"\n{note}" if note else ""
    if job.state is JobState.FAILED and result.get("withheld"):
        # An image judged explicit where it may not be shown: the note alone (a Retry
        # with the same seed would draw the same image again).
        return Outgoing(content=clip(f"{mention} {job.error or ''}", CONTENT_LIMIT))
    if job.state is JobState.FAILED:
        items: tuple[discord.ui.Item[Any], ...] = ()
        # A training is retried from its image set. A demo that is not set up cannot be
        # retried until it is: its notice can only be deleted.
        if not result.get("retry", True):
            items = (DeleteButton(job.id, owner),)
        elif job.kind is not JobKind.LORA_TRAIN:
            items = (AgainButton(job.id, label="Retry"),)
        what = job.kind.yours
        return Outgoing(
            content=clip(
                f"{mention} {what} failed: {job.error or 'no reason given'}", CONTENT_LIMIT
            ),
            items=items,
        )
    if job.state is JobState.INTERRUPTED:
        return Outgoing(
            content=(
                f"{mention} {job.kind.yours} was interrupted by a restart of the bot before "
                "Ta-da answered. Press Retry to ask again."
            ),
            items=(AgainButton(job.id, label="Retry"),),
        )
    if job.kind is JobKind.VOICE_SPEAK:
        score = likeness_line(
            result.get("similarity_score"), result.get("likeness"), p.get("voice_base_score")
        )
        voice = clip(visible(str(p.get("voice_name") or p.get("voice_id"))), 100)
        text = clip(str(p.get("text", "")), 1500)
        return Outgoing(
            content=clip(f"{mention} 🗣️ **{voice}** says:\n> {text}{score}{extra}", CONTENT_LIMIT),
            files=files,
            items=(
                AgainButton(job.id, label="Speak again"),
                # On the post that holds the audio (a voice message holds it elsewhere).
                *((SoundboardButton(job.id),) if expressions and files else ()),
                DeleteButton(job.id, owner),
            ),
        )
    if job.kind is JobKind.LORA_TRAIN:
        trigger = visible(str(p.get("trigger_word") or ""))
        hint = f" Use the trigger word `{trigger}` in your prompts." if trigger else ""
        return Outgoing(
            content=(
                f"{mention} ✅ Your LoRA **{clip(visible(str(p.get('name') or 'LoRA')), 100)}** "
                f"is trained.{hint}"
            ),
            items=(GenerateButton(owner, str(result.get("lora_id") or job.tada_id)),),
        )
    prompt = str(result.get("prompt") or p.get("prompt", ""))
    enhanced = result.get("enhanced_prompt")
    if job.kind is JobKind.DEMO_GENERATE:
        title = f"{str(p.get('model', 'demo')).title()} demo"
    else:
        title = f"🎨 {clip(visible(str(p.get('lora_name') or 'Your LoRA')), 100)}"
    if is_test_model(result.get("model")):
        extra += f"\n{TEST_MODEL_NOTE}"
    embed = _prompt_embed(title, prompt, enhanced if isinstance(enhanced, str) else None)
    for name, value in image_fields(job):
        embed.add_field(name=name, value=clip(value, EMBED_FIELD_LIMIT), inline=True)
    # A jump link: Discord shows it as a link to the image this one varies or upscales.
    lead = parent_lead(p)
    buttons: list[discord.ui.Item[Any]] = [AgainButton(job.id, label="Re-roll")]
    if result.get("can_vary"):
        buttons.append(VaryButton(job.id))
    if result.get("can_upscale"):
        buttons.append(UpscaleButton(job.id))
    if result.get("can_vary_image"):
        buttons += [VarySubtleButton(job.id), VaryStrongButton(job.id)]
    if job.kind is JobKind.LORA_GENERATE and isinstance(result.get("seed"), int):
        buttons.append(SeedButton(job.id))
    if expressions and files:
        buttons += [EmojiButton(job.id), StickerButton(job.id)]
    buttons.append(DeleteButton(job.id, owner))
    return Outgoing(
        content=clip(f"{mention}{lead}{extra}", CONTENT_LIMIT),
        embed=embed,
        files=files,
        items=tuple(buttons),
    )
