"""``/lora``: upload an image set, train a LoRA on it, generate images with it.

Thin: parse, check the files (``bot.media``, in a thread), call Ta-da through the gate or
queue a job with the runner, render. Trainings and generations are jobs: progress and
results are posted in the channel, across restarts.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import BotServices, TadaBot
from bot.errors import NotLinked, UserFacingError
from bot.gate import Action, Feature, request_for
from bot.jobs.buttons import TrainButton
from bot.jobs.images import ASPECT_RATIOS, MAX_SEED, ImageOptions, unsupported_note
from bot.jobs.render import progress_fraction
from bot.jobs.runner import JobRunner, admit
from bot.media import (
    IMAGE_SUFFIXES,
    MAX_IMAGES,
    MAX_ZIP_BYTES,
    ImageSet,
    build_image_set_async,
    contact_sheet_async,
    inspect_zip_async,
    suffix_of,
)
from bot.messages import CONTENT_LIMIT, clip
from bot.names import check_shown_name, visible
from bot.pages import PagedView, matching_choices, paginate
from bot.tada import TadaClient


def refused_note(image_set: ImageSet) -> str:
    """What was left out of a set and why, for the member."""
    if not image_set.refused:
        return ""
    lines = [f"• `{clip(r.name, 80)}`: {r.reason}" for r in image_set.refused[:15]]
    more = len(image_set.refused) - len(lines)
    tail = f"\n…and {more} more" if more > 0 else ""
    return "\nLeft out:\n" + "\n".join(lines) + tail


class LoraCog(commands.GroupCog, group_name="lora", group_description="Image styles (LoRAs)"):
    """Upload image sets, train LoRAs, generate images."""

    def __init__(self, services: BotServices, runner: JobRunner) -> None:
        self.services = services
        self.runner = runner
        super().__init__()

    async def _tada(self, interaction: discord.Interaction[Any]) -> TadaClient:
        return await self.services.accounts.client_for(interaction.user.id)

    async def _upload(
        self,
        interaction: discord.Interaction[Any],
        name: str,
        trigger_word: str,
        prepare: Callable[[], Awaitable[ImageSet]],
    ) -> None:
        """Admit, check the files, upload the zip, answer with a contact sheet and Train."""
        check_shown_name(name, "The name")
        check_shown_name(trigger_word, "The trigger word")
        # The name and the trigger word are shown to the server: moderated like a prompt.
        request = request_for(
            interaction, Feature.LORA, Action.LORA_UPLOAD, text=f"{name}\n{trigger_word}"
        )
        admission, tada = await admit(self.services, interaction, request)
        await interaction.response.defer(ephemeral=True, thinking=True)
        image_set = await prepare()
        target = await tada.create_lora_upload_url(name, trigger_word, "images.zip")
        await tada.put_upload(target, image_set.zip_bytes)
        await self.services.gate.record(request)
        sheet = await contact_sheet_async(image_set.thumbnails)
        view = discord.ui.View(timeout=None)
        view.add_item(TrainButton(interaction.user.id, target.upload_id))
        text = (
            f"📦 **{clip(name, 100)}**: {len(image_set.kept)} image(s) uploaded "
            f"(trigger word `{clip(trigger_word, 50)}`). Press Train to start."
            f"{refused_note(image_set)}"
        )
        await interaction.edit_original_response(content="Uploaded.")
        await interaction.followup.send(
            content=clip(text, CONTENT_LIMIT),
            file=discord.File(io.BytesIO(sheet), filename="contact-sheet.png"),
            view=view,
            ephemeral=admission.private_results,
        )

    @app_commands.command(name="upload")
    @app_commands.describe(
        name="A name for the image set",
        trigger_word="A word your prompts will use to call this style",
        images="A zip of 5 to 30 images (at least 256 px each)",
    )
    async def upload(
        self,
        interaction: discord.Interaction[Any],
        name: app_commands.Range[str, 1, 100],
        trigger_word: app_commands.Range[str, 1, 50],
        images: discord.Attachment,
    ) -> None:
        """Upload a zip of images to train a LoRA on."""
        if suffix_of(images.filename) != ".zip":
            raise UserFacingError(f"`{images.filename}` is not a zip; attach a .zip of images.")
        if images.size > MAX_ZIP_BYTES:
            raise UserFacingError(f"That zip is over {MAX_ZIP_BYTES // (1024 * 1024)} MB.")

        async def prepare() -> ImageSet:
            return await inspect_zip_async(await images.read())

        await self._upload(interaction, name, trigger_word, prepare)

    @app_commands.command(name="upload-images")
    @app_commands.describe(
        name="A name for the image set",
        trigger_word="A word your prompts will use to call this style",
        image1="An image (at least 256 px)",
    )
    async def upload_images(
        self,
        interaction: discord.Interaction[Any],
        name: app_commands.Range[str, 1, 100],
        trigger_word: app_commands.Range[str, 1, 50],
        image1: discord.Attachment,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        image5: discord.Attachment | None = None,
        image6: discord.Attachment | None = None,
        image7: discord.Attachment | None = None,
        image8: discord.Attachment | None = None,
        image9: discord.Attachment | None = None,
        image10: discord.Attachment | None = None,
    ) -> None:
        """Upload up to 10 images; the bot zips them (upright, no duplicates)."""
        attachments = [
            a
            for a in (
                image1,
                image2,
                image3,
                image4,
                image5,
                image6,
                image7,
                image8,
                image9,
                image10,
            )
            if a is not None
        ][:MAX_IMAGES]
        bad = [a.filename for a in attachments if suffix_of(a.filename) not in IMAGE_SUFFIXES]
        if len(bad) == len(attachments):
            raise UserFacingError(
                "None of those files is an image (PNG, JPEG, WebP): " + ", ".join(bad)
            )

        async def prepare() -> ImageSet:
            datas = await asyncio.gather(*(a.read() for a in attachments))
            return await build_image_set_async(
                [(a.filename, d) for a, d in zip(attachments, datas, strict=True)]
            )

        await self._upload(interaction, name, trigger_word, prepare)

    @app_commands.command(name="train")
    @app_commands.describe(upload="One of your uploaded image sets")
    async def train(self, interaction: discord.Interaction[Any], upload: str) -> None:
        """Train a LoRA on an image set; progress is posted here and you are mentioned."""
        await self.runner.submit(interaction, self.runner.train_request(upload))

    @app_commands.command(name="list")
    async def list_(self, interaction: discord.Interaction[Any]) -> None:
        """Your image sets and trainings."""
        tada = await self._tada(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        uploads, trainings = await asyncio.gather(
            tada.list_lora_uploads(), tada.list_lora_trainings(limit=100)
        )
        status = {t.upload_id: t.status for t in trainings}
        lines = [
            f"• **{clip(visible(u.name), 80)}** `{u.id}` "
            f"trigger `{visible(u.trigger_word or '')}`: {status.get(u.id) or 'not trained'}"
            for u in uploads
        ]
        text = "\n".join(lines) or "No image sets yet: `/lora upload` starts one."
        await interaction.edit_original_response(content=clip(text, CONTENT_LIMIT))

    @app_commands.command(name="status")
    @app_commands.describe(upload="One of your image sets")
    async def status(self, interaction: discord.Interaction[Any], upload: str) -> None:
        """Where a training stands."""
        tada = await self._tada(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        training = await tada.get_lora_training(upload)
        # A fraction (the hosted API) or a percentage (our engine), shown as a percentage.
        progress = progress_fraction(training) * 100
        error = f"\nError: {training.error}" if training.error else ""
        await interaction.edit_original_response(
            content=f"Training `{upload}`: **{training.status}** ({progress:.0f}%){error}"
        )

    @app_commands.command(name="generate")
    @app_commands.describe(
        lora="One of your trained LoRAs",
        prompt="What to draw",
        seed="Draw the same image again: the seed shown under an earlier image (default: random)",
        aspect_ratio="Width:height of the image (default: square)",
        negative_prompt="What the image should not show",
    )
    @app_commands.choices(
        aspect_ratio=[app_commands.Choice(name=ratio, value=ratio) for ratio in ASPECT_RATIOS]
    )
    async def generate(
        self,
        interaction: discord.Interaction[Any],
        lora: str,
        prompt: app_commands.Range[str, 1, 1000],
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        aspect_ratio: str | None = None,
        negative_prompt: app_commands.Range[str, 1, 1000] | None = None,
    ) -> None:
        """Generate an image with one of your LoRAs; it is posted here."""
        asked = ImageOptions(seed=seed, negative_prompt=negative_prompt, aspect_ratio=aspect_ratio)
        # Reading what this server's API offers may take a call: answer Discord first.
        await interaction.response.defer(ephemeral=True, thinking=True)
        offer = await self.services.tada.generation_offer()
        request = self.runner.generate_request(lora, prompt, options=asked.within(offer))
        await self.runner.submit(interaction, request)
        if missing := asked.missing_from(offer):
            await interaction.followup.send(unsupported_note(missing), ephemeral=True)

    @app_commands.command(name="gallery")
    async def gallery(self, interaction: discord.Interaction[Any]) -> None:
        """Your generated images, newest first, page by page."""
        tada = await self._tada(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        images = await tada.list_all_lora_generations(limit=100)
        # Links in <>: Discord shows no preview, so no image is drawn here unclassified
        # (a key's images made through the API never went through this bot's classifier).
        lines = [
            f"• “{clip(g.prompt or '', 120)}” <{g.image_url}>"
            if g.image_url
            else f"• “{clip(g.prompt or '', 120)}”"
            for g in images
        ]
        view = PagedView(paginate(lines, per_page=5), interaction.user.id)
        await interaction.edit_original_response(content=view.page(), view=view)

    @train.autocomplete("upload")
    @status.autocomplete("upload")
    async def _uploads(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        try:
            tada = await self._tada(interaction)
        except NotLinked:
            return []
        uploads = await tada.list_lora_uploads()
        return matching_choices(((u.name, u.id) for u in uploads), current)

    @generate.autocomplete("lora")
    async def _loras(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        try:
            tada = await self._tada(interaction)
        except NotLinked:
            return []
        uploads, trainings = await asyncio.gather(
            tada.list_lora_uploads(), tada.list_lora_trainings(limit=100)
        )
        ready = {t.upload_id for t in trainings if t.status == "succeeded"}
        return matching_choices(((u.name, u.id) for u in uploads if u.id in ready), current)


async def setup(bot: commands.Bot) -> None:
    """Load the cog (discord.py extension entry point)."""
    if not isinstance(bot, TadaBot):
        raise TypeError("cogs.lora needs a TadaBot (it reads bot.services and bot.jobs)")
    await bot.add_cog(LoraCog(bot.services, bot.jobs))
