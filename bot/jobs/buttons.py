"""Persistent buttons on posted results: they keep working after a bot restart.

Each is a :class:`discord.ui.DynamicItem`: its state (job id, owner, Ta-da id) lives in the
custom id, so discord.py rebuilds it from any message, whenever it was posted. Errors in a
callback reach the member through :func:`bot.errors.report_error`, like command errors.
"""

from __future__ import annotations

import contextlib
import io
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Self

import discord

from bot.errors import NotLinked, UserFacingError, report_error
from bot.expressions import (
    ExpressionKind,
    base_name_of,
    check_may_create,
    made_line,
    make_expression,
)
from bot.jobs.deps import JobActions
from bot.jobs.images import (
    ImageOptions,
    parse_ratio,
    parse_seed,
    refine_request,
    seed_card,
    variation_request,
    with_new_seed,
)
from bot.jobs.store import JobNotFound
from bot.messages import CONTENT_LIMIT, DEFAULT_FILE_LIMIT, clip, requester_only
from bot.names import visible
from bot.replay import Replay, fetch_speech
from bot.ui import TadaModal

if TYPE_CHECKING:
    from bot.jobs.models import Job, JobRequest


def runner_of(interaction: discord.Interaction[Any]) -> JobActions:
    """The job runner of the bot that received ``interaction``.

    discord.py rebuilds a persistent button from its custom id alone, so the runner is the
    one the composition root put on the bot (``TadaBot.jobs``).
    """
    runner = getattr(interaction.client, "jobs", None)
    if not isinstance(runner, JobActions):
        raise RuntimeError("this bot has no job runner")
    return runner


# What a button on an old result says when its job row is gone (/tada forget deletes a
# member's jobs; the message stays in the channel).
JOB_GONE = (
    "The bot no longer keeps the request behind this message (its owner may have asked "
    "the bot to forget them), so it cannot be repeated from here. Ask again with the command."
)


async def _check_linked(interaction: discord.Interaction[Any]) -> None:
    """Before a modal: a member without an account is told to link, not shown a form."""
    if await runner_of(interaction).services.members.get(interaction.user.id) is None:
        raise NotLinked()


def _check_owner(interaction: discord.Interaction[Any], owner: int) -> None:
    if interaction.user.id != owner:
        raise UserFacingError(f"This button belongs to <@{owner}>; ask with your own command.")


class _Answering(ABC):
    """Mixin: a button callback whose errors are answered like a command's."""

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        try:
            await self.act(interaction)
        except Exception as exc:  # every failure ends as an answer to the member
            await report_error(interaction, exc)

    @abstractmethod
    async def act(self, interaction: discord.Interaction[Any]) -> None:
        """What the button does."""


def again_custom_id(job_id: str) -> str:
    """The custom id of a result's Again button: which job a message is the result of."""
    return f"tada:again:{job_id}"


def marks_result_of(custom_id: str | None, job_id: str) -> bool:
    """Whether a button with ``custom_id`` tells that its message is ``job_id``'s result:
    its Again button, or its Delete button where there is nothing to ask again."""
    return custom_id is not None and (
        custom_id == again_custom_id(job_id) or custom_id.startswith(f"tada:del:{job_id}:")
    )


class AgainButton(
    _Answering,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"tada:again:(?P<job>[0-9a-f]{32})",
):
    """Ask again with the same request: speak again, re-roll, retry (owner only)."""

    def __init__(self, job_id: str, *, label: str = "Again") -> None:
        super().__init__(
            discord.ui.Button(
                label=label, style=discord.ButtonStyle.primary, custom_id=again_custom_id(job_id)
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> AgainButton:
        return cls(match["job"])

    async def act(self, interaction: discord.Interaction[Any]) -> None:
        runner = runner_of(interaction)
        try:
            job = await runner.store.get(self.job_id)
        except JobNotFound as exc:
            raise UserFacingError(JOB_GONE) from exc
        _check_owner(interaction, job.user_id)
        await runner.submit(interaction, with_new_seed(job, runner.request_like(job)))


class DeleteButton(
    _Answering,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"tada:del:(?P<job>[0-9a-f]{32}):(?P<owner>[0-9]+)",
):
    """Delete a posted result (its owner only)."""

    def __init__(self, job_id: str, owner: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Delete",
                style=discord.ButtonStyle.danger,
                custom_id=f"tada:del:{job_id}:{owner}",
            )
        )
        self.job_id = job_id
        self.owner = owner

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> DeleteButton:
        return cls(match["job"], int(match["owner"]))

    async def act(self, interaction: discord.Interaction[Any]) -> None:
        _check_owner(interaction, self.owner)
        await interaction.response.defer()
        if interaction.message is not None:
            # Deleted already (another press, a moderator): nothing left to do.
            with contextlib.suppress(discord.NotFound):
                await interaction.message.delete()


class AskModal(TadaModal):
    """Asks the member for one text (field ``field``), then queues the job ``make`` builds
    from it; errors are answered like a command's."""

    def __init__(
        self,
        *,
        title: str,
        label: str,
        field: str,
        make: Callable[[JobActions, str], JobRequest],
    ) -> None:
        super().__init__(title=title)
        self.answer: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label=label,
            custom_id=field,
            style=discord.TextStyle.paragraph,
            min_length=1,
            max_length=1000,
        )
        self.add_item(self.answer)
        self._make = make

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        runner = runner_of(interaction)
        await runner.submit(interaction, self._make(runner, self.answer.value))


def prompt_modal(lora_id: str) -> AskModal:
    """Asks for a prompt, then queues a LoRA generation."""
    return AskModal(
        title="Generate an image",
        label="Prompt",
        field="prompt",
        make=lambda runner, prompt: runner.generate_request(lora_id, prompt),
    )


def speak_modal(voice_id: str) -> AskModal:
    """Asks for a text, then queues speech with the voice."""
    return AskModal(
        title="Speak with this voice",
        label="Text to speak",
        field="text",
        make=lambda runner, text: runner.speak_request(voice_id, text),
    )


class OwnedButton(
    _Answering,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    # The base matches no custom id; only its subclasses (one ``kind`` each) are registered.
    template=r"(?!)",
):
    """A button bound to its owner and one Ta-da id, its custom id
    ``tada:<kind>:<owner>:<target>``; a subclass names its kind and label
    (``class X(OwnedButton, kind="gen", label="Generate")``) and does :meth:`run`,
    which only the owner reaches."""

    kind: ClassVar[str]
    label: ClassVar[str]

    def __init_subclass__(cls, *, kind: str, label: str, **kwargs: Any) -> None:
        super().__init_subclass__(
            template=rf"tada:{kind}:(?P<owner>[0-9]+):(?P<target>[\w.-]{{1,64}})", **kwargs
        )
        cls.kind = kind
        cls.label = label

    def __init__(self, owner: int, target: str) -> None:
        super().__init__(
            discord.ui.Button(
                label=self.label,
                style=discord.ButtonStyle.success,
                custom_id=f"tada:{self.kind}:{owner}:{target}",
            )
        )
        self.owner = owner
        self.target = target

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> Self:
        return cls(int(match["owner"]), match["target"])

    async def act(self, interaction: discord.Interaction[Any]) -> None:
        _check_owner(interaction, self.owner)
        await self.run(interaction)

    @abstractmethod
    async def run(self, interaction: discord.Interaction[Any]) -> None:
        """What the button does for its owner (``self.target`` is the Ta-da id)."""


class GenerateButton(OwnedButton, kind="gen", label="Generate"):
    """Open the prompt modal for a trained LoRA (owner only)."""

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        await _check_linked(interaction)
        await interaction.response.send_modal(prompt_modal(self.target))


class SpeakButton(OwnedButton, kind="speak", label="Speak"):
    """Open the text modal for a voice (owner only)."""

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        await _check_linked(interaction)
        await interaction.response.send_modal(speak_modal(self.target))


class TrainButton(OwnedButton, kind="train", label="Train"):
    """Start training on an uploaded image set (owner only)."""

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        runner = runner_of(interaction)
        await runner.submit(interaction, runner.train_request(self.target))


class RepostButton(OwnedButton, kind="repost", label="Post in channel"):
    """Post a past speech (from ``/voice history``) in the channel (owner only); no new
    generation, so no quota is used."""

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        services = runner_of(interaction).services
        tada = await services.accounts.client_for(interaction.user.id)
        await interaction.response.defer(ephemeral=True, thinking=True)
        limit = interaction.guild.filesize_limit if interaction.guild else DEFAULT_FILE_LIMIT
        replay = await fetch_speech(tada, self.target, max_bytes=limit)
        voice = await tada.get_voice(replay.generation.voice_id)
        channel = interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            raise UserFacingError("This recording can only be posted in a channel.")
        try:
            await self._post(channel, replay, voice.name)
        except discord.Forbidden as exc:
            raise UserFacingError(
                "I am not allowed to post in this channel (I need Send Messages and Attach "
                "Files here)."
            ) from exc
        await interaction.edit_original_response(content="Posted in the channel.")

    async def _post(self, channel: discord.abc.Messageable, replay: Replay, name: str) -> None:
        await channel.send(
            clip(
                f"<@{self.owner}> 🔁 **{clip(visible(name), 100)}** said:\n"
                f"> {clip(replay.generation.text, 1500)}",
                CONTENT_LIMIT,
            ),
            file=discord.File(io.BytesIO(replay.data), filename=replay.filename),
            allowed_mentions=requester_only(self.owner),
        )


async def _job_of(interaction: discord.Interaction[Any], job_id: str) -> Job:
    try:
        return await runner_of(interaction).store.get(job_id)
    except JobNotFound as exc:
        raise UserFacingError(JOB_GONE) from exc


class _JobButton(
    _Answering,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    # The base matches no custom id; only its subclasses (one ``kind`` each) are registered.
    template=r"(?!)",
):
    """A button bound to one job, its custom id ``tada:<kind>:<job id>``; a subclass names
    its kind, label and style and does :meth:`act`."""

    kind: ClassVar[str]
    label: ClassVar[str]
    style: ClassVar[discord.ButtonStyle]

    def __init_subclass__(
        cls, *, kind: str, label: str, style: discord.ButtonStyle, **kwargs: Any
    ) -> None:
        super().__init_subclass__(template=rf"tada:{kind}:(?P<job>[0-9a-f]{{32}})", **kwargs)
        cls.kind, cls.label, cls.style = kind, label, style

    def __init__(self, job_id: str) -> None:
        super().__init__(
            discord.ui.Button(
                label=self.label, style=self.style, custom_id=f"tada:{self.kind}:{job_id}"
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> Self:
        return cls(match["job"])


class VaryButton(_JobButton, kind="vary", label="Variations", style=discord.ButtonStyle.secondary):
    """A variation of this image: same LoRA and prompt, a new seed, linked to this post
    (owner only; admitted and counted like the command)."""

    async def act(self, interaction: discord.Interaction[Any]) -> None:
        job = await _job_of(interaction, self.job_id)
        _check_owner(interaction, job.user_id)
        parent = interaction.message.jump_url if interaction.message is not None else None
        await runner_of(interaction).submit(interaction, variation_request(job, parent))


async def _refine(interaction: discord.Interaction[Any], job_id: str, operation: str) -> None:
    """Queue an upscale or a variation of a posted image, linked to its post (owner only)."""
    job = await _job_of(interaction, job_id)
    _check_owner(interaction, job.user_id)
    parent = interaction.message.jump_url if interaction.message is not None else None
    await runner_of(interaction).submit(interaction, refine_request(job, operation, parent))


class UpscaleButton(
    _JobButton, kind="upscale", label="Upscale 2x", style=discord.ButtonStyle.secondary
):
    """This image at twice its size, redrawn lightly with the same LoRA, linked to this post
    (owner only; admitted and counted like the command)."""

    async def act(self, interaction: discord.Interaction[Any]) -> None:
        await _refine(interaction, self.job_id, "upscale")


class VarySubtleButton(
    _JobButton, kind="vsubtle", label="Vary (subtle)", style=discord.ButtonStyle.secondary
):
    """A subtle variation drawn from this image (details change), linked to this post
    (owner only; admitted and counted like the command)."""

    async def act(self, interaction: discord.Interaction[Any]) -> None:
        await _refine(interaction, self.job_id, "vary_subtle")


class VaryStrongButton(
    _JobButton, kind="vstrong", label="Vary (strong)", style=discord.ButtonStyle.secondary
):
    """A strong variation drawn from this image (its composition and colours kept), linked
    to this post (owner only; admitted and counted like the command)."""

    async def act(self, interaction: discord.Interaction[Any]) -> None:
        await _refine(interaction, self.job_id, "vary_strong")


class SeedButton(_JobButton, kind="seed", label="Use seed", style=discord.ButtonStyle.secondary):
    """The image's seed and parameters, shown privately to whoever asks; its owner also
    gets **Draw with this seed** (a new prompt, the same seed)."""

    async def act(self, interaction: discord.Interaction[Any]) -> None:
        job = await _job_of(interaction, self.job_id)
        view = discord.ui.View(timeout=None)
        if interaction.user.id == job.user_id and (job.result or {}).get("seed_reusable"):
            view.add_item(ReseedButton(job.id))
        await interaction.response.send_message(
            clip(seed_card(job), CONTENT_LIMIT),
            view=view,
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )


class ReseedButton(
    _JobButton, kind="reseed", label="Draw with this seed", style=discord.ButtonStyle.primary
):
    """Open a modal with the image's prompt, seed, negative prompt and aspect ratio filled
    in, to draw again with the seed kept (owner only)."""

    async def act(self, interaction: discord.Interaction[Any]) -> None:
        job = await _job_of(interaction, self.job_id)
        _check_owner(interaction, job.user_id)
        await _check_linked(interaction)
        await interaction.response.send_modal(SeedModal(job))


class _ExpressionButton(
    _JobButton,
    kind="expression",
    label="Expression",
    style=discord.ButtonStyle.secondary,
):
    """Make the result above into one of the server's expressions (``expression_kind``),
    for a member the server's roles allow (:func:`bot.expressions.check_may_create`)."""

    expression_kind: ClassVar[ExpressionKind]

    async def act(self, interaction: discord.Interaction[Any]) -> None:
        job = await _job_of(interaction, self.job_id)
        if interaction.guild_id is None or not isinstance(interaction.user, discord.Member):
            raise UserFacingError("This works in a server only.")
        policy = runner_of(interaction).services.policy
        kind = self.expression_kind
        check_may_create(interaction.user, await policy.settings(interaction.guild_id), kind)
        await interaction.response.defer(thinking=True)
        made = await make_expression(
            interaction.user,
            interaction.message,
            kind,
            base_name=base_name_of(job.params, kind),
            owner_id=job.user_id,
        )
        await interaction.followup.send(
            made_line(interaction.user.id, made), allowed_mentions=discord.AllowedMentions.none()
        )


class SoundboardButton(
    _ExpressionButton, kind="sound", label="Soundboard", style=discord.ButtonStyle.secondary
):
    """This speech as a soundboard sound (its first 5 s)."""

    expression_kind = ExpressionKind.SOUND


class EmojiButton(
    _ExpressionButton, kind="emoji", label="Emoji", style=discord.ButtonStyle.secondary
):
    """This image as a custom emoji (centre square, 128x128)."""

    expression_kind = ExpressionKind.EMOJI


class StickerButton(
    _ExpressionButton, kind="sticker", label="Sticker", style=discord.ButtonStyle.secondary
):
    """This image as a sticker (centre square, 320x320)."""

    expression_kind = ExpressionKind.STICKER


class SeedModal(TadaModal):
    """A generation with a chosen seed: the posted image's parameters, to edit."""

    def __init__(self, job: Job) -> None:
        super().__init__(title="Draw with this seed")
        p, result = job.params, job.result or {}
        self.lora_id = str(p["lora_id"])
        self.lora_name = p.get("lora_name")
        seed = result.get("seed")

        def field(label: str, custom_id: str, value: Any, **kw: Any) -> discord.ui.TextInput[Any]:
            text = discord.ui.TextInput[Any](
                label=label,
                custom_id=custom_id,
                default=str(value) if value not in (None, "") else None,
                **kw,
            )
            self.add_item(text)
            return text

        self.prompt = field(
            "Prompt",
            "prompt",
            result.get("prompt") or p.get("prompt"),
            style=discord.TextStyle.paragraph,
            min_length=1,
            max_length=1000,
        )
        self.seed = field("Seed", "seed", seed, max_length=10, required=False)
        self.negative = field(
            "Negative prompt (optional)",
            "negative_prompt",
            p.get("negative_prompt"),
            max_length=1000,
            required=False,
        )
        self.ratio = field(
            "Aspect ratio (1:1, 3:2, 16:9, …; optional)",
            "aspect_ratio",
            p.get("aspect_ratio"),
            max_length=5,
            required=False,
        )

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        options = ImageOptions(
            seed=parse_seed(self.seed.value),
            negative_prompt=self.negative.value.strip() or None,
            aspect_ratio=parse_ratio(self.ratio.value),
        )
        runner = runner_of(interaction)
        request = runner.generate_request(
            self.lora_id, self.prompt.value, self.lora_name, options=options
        )
        await runner.submit(interaction, request)


PERSISTENT_BUTTONS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (
    AgainButton,
    DeleteButton,
    GenerateButton,
    SpeakButton,
    TrainButton,
    RepostButton,
    VaryButton,
    SeedButton,
    ReseedButton,
    UpscaleButton,
    VarySubtleButton,
    VaryStrongButton,
    SoundboardButton,
    EmojiButton,
    StickerButton,
)
