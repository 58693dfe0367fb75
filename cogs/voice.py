"""``/voice``: clone your voice from a recording, then have it speak.

Thin: parse the interaction, call the Ta-da client (through the gate) or the job runner,
render. Speech is a job: it is queued fairly and its audio is posted where it was asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import BotServices, TadaBot
from bot.errors import NotLinked, UserFacingError, reply_for
from bot.gate import Action, Feature, GateRequest, request_for
from bot.installs import server_of
from bot.jobs.buttons import RepostButton, SpeakButton
from bot.jobs.runner import JobRunner, admit
from bot.media import AUDIO_SUFFIXES, MAX_AUDIO_BYTES, check_audio_async, suffix_of
from bot.messages import CONTENT_LIMIT, DEFAULT_FILE_LIMIT, clip
from bot.names import check_shown_name, visible
from bot.pages import PagedView, matching_choices, paginate
from bot.replay import fetch_speech
from bot.tada import TadaClient
from bot.tada.models import Voice, VoiceGeneration
from bot.ui import TadaView

T = TypeVar("T")

# A clone still running after this long gets a line saying why it may take a while: right
# after the engine starts, its first clone also waits for the voice models to load (up to
# 48 s measured under load; issue 26). A warm clone of a 30 s sample took 8-13 s on the
# shared 2-core test machine at load 6 (bench/voice_clone_speed.py), so the line rarely
# shows for one.
CLONE_NOTE_AFTER_S = 15.0
CLONE_NOTE = (
    "Checking your recording and cloning the voice… still working: the first clone after "
    "the engine starts also waits for its voice models to load (up to a minute)."
)


async def awaited_with_note(
    work: Coroutine[Any, Any, T], *, after_s: float, note: Callable[[], Awaitable[object]]
) -> T:
    """``work``'s result; if it is not done after ``after_s``, ``note`` is awaited once
    meanwhile (a progress edit: one Discord refuses is let go, the work goes on)."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=after_s)
    if not done:
        with contextlib.suppress(discord.HTTPException):
            await note()
    return await task


def likeness_field(voice: Voice, latest: VoiceGeneration | None) -> tuple[str, str] | None:
    """How close the clone sounds to the sample (its latest speech), beside where the base
    voice started; before any speech, the starting point worded as such (a low figure
    there is not the clone's result). Calibrated: 0% is where a stranger scores, 100% a
    second recording of the same person."""
    base = voice.base_similarity_score
    before = f"{base}% for the base voice before cloning" if base is not None else ""
    if latest is not None and latest.similarity_score is not None:
        words = f" ({latest.likeness})" if latest.likeness else ""
        against = f", against {before}" if before else ""
        return "Likeness to your sample", (
            f"**{latest.similarity_score}%**{words} in its latest speech{against}"
        )
    if base is None:
        return None
    words = f" ({voice.base_likeness})" if voice.base_likeness else ""
    return "Before cloning", (
        f"The base voice was {base}%{words} like your sample, before cloning. Each speech "
        "shows how close the clone sounds."
    )


def voice_card(
    voice: Voice, owner: int, latest: VoiceGeneration | None = None
) -> tuple[discord.Embed, discord.ui.View]:
    """The card of a voice: name, length, likeness, id, and a Speak button (``latest``: its
    latest speech, if any)."""
    embed = discord.Embed(title=f"🎙️ {clip(visible(voice.name), 200)}")
    if voice.duration_seconds:
        embed.add_field(name="Sample length", value=f"{voice.duration_seconds:.1f} s")
    likeness = likeness_field(voice, latest)
    if likeness is not None:
        embed.add_field(name=likeness[0], value=likeness[1], inline=False)
    embed.add_field(name="Voice id", value=f"`{voice.id}`", inline=False)
    view = discord.ui.View(timeout=None)
    view.add_item(SpeakButton(owner, voice.id))
    return embed, view


def voice_channel_of(
    interaction: discord.Interaction[Any],
) -> discord.VoiceChannel | discord.StageChannel:
    """The voice channel the member is in, where the bot may speak; else a short refusal."""
    if interaction.guild_id is not None and server_of(interaction) is None:
        # The member's own install, in a server that has not added the bot: no voice there.
        raise UserFacingError(
            "I can only speak in the voice channels of servers that added me. "
            "`/voice speak` posts the speech here instead."
        )
    state = interaction.user.voice if isinstance(interaction.user, discord.Member) else None
    room = state.channel if state is not None else None
    if not isinstance(room, discord.VoiceChannel | discord.StageChannel):
        guild = interaction.guild
        if guild is not None and not (guild.voice_channels or guild.stage_channels):
            # The sandbox's simulated server, or a text-only one: nowhere to join.
            raise UserFacingError(
                "This server has no voice channel, so `/voice say` has nowhere to speak. "
                "`/voice speak` posts the speech here instead."
            )
        raise UserFacingError(
            "Join a voice channel first: `/voice say` speaks in the voice channel you are in. "
            "(`/voice speak` posts the speech here instead.)"
        )
    me = room.guild.me
    allowed = room.permissions_for(me) if me is not None else None
    if allowed is not None and not (allowed.connect and allowed.speak):
        raise UserFacingError(
            f"I cannot speak in {room.mention}: I need **Connect** and **Speak** there. "
            "Ask a server admin, or use another voice channel."
        )
    return room


class ConsentView(TadaView):
    """The consent step of ``/voice clone``: nothing is uploaded unless the member confirms."""

    def __init__(
        self,
        *,
        services: BotServices,
        tada: TadaClient,
        request: GateRequest,
        name: str,
        sample: discord.Attachment,
        private: bool,
    ) -> None:
        super().__init__(timeout=300)
        self.services = services
        self.tada = tada
        self.request = request
        self.name = name
        self.sample = sample
        self.private = private
        self.origin: discord.Interaction[Any] | None = None

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        return interaction.user.id == self.request.user_id

    @discord.ui.button(
        label="It's my voice, or I have permission",
        style=discord.ButtonStyle.success,
        custom_id="voice:consent:yes",
    )
    async def confirm(
        self, interaction: discord.Interaction[Any], _: discord.ui.Button[Any]
    ) -> None:
        self.stop()
        await interaction.response.edit_message(
            content="Checking your recording and cloning the voice…", view=None
        )
        try:
            data = await self.sample.read()
            info = await check_audio_async(data, self.sample.filename)
            target = await self.tada.create_voice_upload_url(self.name, self.sample.filename)
            await self.tada.put_upload(target, data)
            voice = await awaited_with_note(
                self.tada.create_voice(target.upload_id),
                after_s=CLONE_NOTE_AFTER_S,
                note=lambda: interaction.edit_original_response(content=CLONE_NOTE),
            )
        except Exception as exc:
            # The progress text ends in a final state; the reason is the reply itself.
            reply = reply_for(exc, where="voice clone")
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(
                    content=f"❌ Nothing was cloned: {reply.text}"
                )
            return
        await self.services.gate.record(self.request)
        embed, view = voice_card(voice, self.request.user_id)
        await interaction.edit_original_response(
            content=f"Voice cloned from {info.duration_seconds:.1f} s of audio."
        )
        await interaction.followup.send(embed=embed, view=view, ephemeral=self.private)

    async def on_timeout(self) -> None:
        if self.origin is not None:
            # The ephemeral prompt may be gone already; then there is nothing to tidy.
            with contextlib.suppress(discord.HTTPException):
                await self.origin.edit_original_response(
                    content="No answer, so nothing was uploaded.", view=None
                )

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary, custom_id="voice:no")
    async def cancel(
        self, interaction: discord.Interaction[Any], _: discord.ui.Button[Any]
    ) -> None:
        self.stop()
        await interaction.response.edit_message(
            content="Cancelled: nothing was uploaded.", view=None
        )


class ReplaySelect(discord.ui.Select[PagedView]):
    """Plays one of the history's entries again, privately, with a button that posts it in
    the channel (no new generation: no quota used)."""

    def __init__(self, generations: Sequence[VoiceGeneration], tada: TadaClient) -> None:
        super().__init__(
            placeholder="Play one again…",
            options=[
                discord.SelectOption(
                    label=clip(visible(g.text), 100) or "…",
                    value=g.id,
                    description=g.created_at.strftime("%Y-%m-%d %H:%M UTC"),
                )
                for g in generations
            ],
        )
        self.tada = tada

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        limit = interaction.guild.filesize_limit if interaction.guild else DEFAULT_FILE_LIMIT
        replay = await fetch_speech(self.tada, self.values[0], max_bytes=limit)
        view = discord.ui.View(timeout=None)
        view.add_item(RepostButton(interaction.user.id, replay.generation.id))
        await interaction.followup.send(
            f"🔁 “{clip(replay.generation.text, 1500)}”",
            file=discord.File(io.BytesIO(replay.data), filename=replay.filename),
            view=view,
            ephemeral=True,
        )


class VoiceCog(commands.GroupCog, group_name="voice", group_description="Cloned voices"):
    """Clone, list, inspect and speak with your voices."""

    def __init__(self, services: BotServices, runner: JobRunner) -> None:
        self.services = services
        self.runner = runner
        super().__init__()

    async def _tada(self, interaction: discord.Interaction[Any]) -> TadaClient:
        return await self.services.accounts.client_for(interaction.user.id)

    @app_commands.command(name="clone")
    @app_commands.describe(
        name="A name for the voice", sample="A recording of the voice: 10 to 60 s of clear speech"
    )
    async def clone(
        self,
        interaction: discord.Interaction[Any],
        name: app_commands.Range[str, 1, 100],
        sample: discord.Attachment,
    ) -> None:
        """Clone a voice from a recording (yours, or one you have permission to use)."""
        if suffix_of(sample.filename) not in AUDIO_SUFFIXES:
            raise UserFacingError(
                f"`{sample.filename}` is not an audio file. Attach a WAV, MP3, OGG, M4A or "
                "FLAC recording."
            )
        if sample.size > MAX_AUDIO_BYTES:
            raise UserFacingError(
                f"That recording is over {MAX_AUDIO_BYTES // (1024 * 1024)} MB; send a shorter one."
            )
        check_shown_name(name, "The name")
        # The voice's name is shown to the server (cards, lists): moderated like a prompt.
        request = request_for(interaction, Feature.VOICE, Action.VOICE_CLONE, text=name)
        admission, tada = await admit(self.services, interaction, request)
        view = ConsentView(
            services=self.services,
            tada=tada,
            request=request,
            name=name,
            sample=sample,
            private=admission.private_results,
        )
        await interaction.response.send_message(
            f"Before cloning **{clip(name, 100)}** from `{sample.filename}`: is this your own "
            "voice, or do you have the speaker's permission? Nothing is uploaded until you "
            "confirm.",
            view=view,
            ephemeral=True,
        )
        view.origin = interaction

    @app_commands.command(name="list")
    async def list_(self, interaction: discord.Interaction[Any]) -> None:
        """List your cloned voices."""
        tada = await self._tada(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        voices = await tada.list_voices()
        lines = [
            f"• **{clip(visible(v.name), 80)}** `{v.id}`"
            + (f" ({v.duration_seconds:.0f} s sample)" if v.duration_seconds else "")
            for v in voices
        ]
        text = "\n".join(lines) or "You have no voices yet: `/voice clone` makes one."
        await interaction.edit_original_response(content=clip(text, CONTENT_LIMIT))

    @app_commands.command(name="info")
    @app_commands.describe(voice="One of your voices")
    async def info(self, interaction: discord.Interaction[Any], voice: str) -> None:
        """Show a voice's card."""
        tada = await self._tada(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        found = await tada.get_voice(voice)
        spoken = await tada.list_voice_generations(found.id, limit=1)
        latest = spoken.generations[0] if spoken.generations else None
        embed, view = voice_card(found, interaction.user.id, latest)
        await interaction.edit_original_response(embed=embed, view=view)

    @app_commands.command(name="speak")
    @app_commands.describe(voice="One of your voices", text="What the voice should say")
    async def speak(
        self,
        interaction: discord.Interaction[Any],
        voice: str,
        text: app_commands.Range[str, 1, 1000],
    ) -> None:
        """Have one of your voices say something; the audio is posted here."""
        await self.runner.submit(interaction, self.runner.speak_request(voice, text))

    @app_commands.command(name="say")
    @app_commands.describe(voice="One of your voices", text="What the voice should say")
    @app_commands.guild_only()
    async def say(
        self,
        interaction: discord.Interaction[Any],
        voice: str,
        text: app_commands.Range[str, 1, 1000],
    ) -> None:
        """Have one of your voices say something in your voice channel (posted here too)."""
        room = voice_channel_of(interaction)
        await self.runner.submit(
            interaction, self.runner.speak_request(voice, text, play_in=room.id)
        )

    @app_commands.command(name="skip")
    @app_commands.guild_only()
    async def skip(self, interaction: discord.Interaction[Any]) -> None:
        """Skip the speech playing in the voice channel."""
        player = self.runner.player
        skipped = (
            player is not None
            and interaction.guild_id is not None
            and player.skip(interaction.guild_id)
        )
        await interaction.response.send_message(
            "Skipped." if skipped else "Nothing is playing.", ephemeral=True
        )

    @app_commands.command(name="stop")
    @app_commands.guild_only()
    async def stop(self, interaction: discord.Interaction[Any]) -> None:
        """Stop speaking in the voice channel, drop what waits, and leave."""
        player = self.runner.player
        left = (
            player is not None
            and interaction.guild_id is not None
            and await player.stop(interaction.guild_id)
        )
        await interaction.response.send_message(
            "Stopped and left the voice channel." if left else "I am not in a voice channel.",
            ephemeral=True,
        )

    @app_commands.command(name="history")
    @app_commands.describe(voice="Only this voice (all voices when left out)")
    async def history(
        self, interaction: discord.Interaction[Any], voice: str | None = None
    ) -> None:
        """Your past speech, newest first, page by page."""
        tada = await self._tada(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        if voice:
            page = await tada.list_voice_generations(voice, limit=100)
        else:
            page = await tada.list_all_voice_generations(limit=100)
        lines = [
            f"• <t:{int(g.created_at.timestamp())}:R> “{clip(g.text, 120)}”"
            + (f" ({g.similarity:.0%})" if g.similarity is not None else "")
            for g in page.generations
        ]
        view = PagedView(paginate(lines), interaction.user.id)
        if page.generations:
            view.add_item(ReplaySelect(page.generations[:25], tada))
        await interaction.edit_original_response(content=view.page(), view=view)

    @info.autocomplete("voice")
    @speak.autocomplete("voice")
    @say.autocomplete("voice")
    @history.autocomplete("voice")
    async def _voices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        try:
            tada = await self._tada(interaction)
        except NotLinked:
            return []
        return matching_choices(((v.name, v.id) for v in await tada.list_voices()), current)


async def setup(bot: commands.Bot) -> None:
    """Load the cog (discord.py extension entry point)."""
    if not isinstance(bot, TadaBot):
        raise TypeError("cogs.voice needs a TadaBot (it reads bot.services and bot.jobs)")
    await bot.add_cog(VoiceCog(bot.services, bot.jobs))
