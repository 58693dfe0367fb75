"""``/tada-admin``: server admins set the bot up for their community.

Visible by default only to members with Manage Server (Discord enforces it; a server
may grant it to other roles in its integration settings), guilds only, and every answer
is ephemeral. Thin: each command calls :class:`bot.policy.PolicyService` and renders.
"""

from __future__ import annotations

import re
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands
from pydantic import SecretStr

from bot.app import TadaBot
from bot.errors import UserFacingError
from bot.gate import Action, Feature
from bot.media import AUDIO_SUFFIXES, suffix_of
from bot.messages import CONTENT_LIMIT, EMBED_FIELD_LIMIT, clip_lines
from bot.policy import GuildSettings, Limit, PolicyService, UsageReport
from bot.policy.moderation import DEFAULT_BLOCKED_WORDS, active_words
from bot.policy.service import MAX_USAGE_DAYS, SharedKeyInfo
from bot.policy.settings import FEATURE_NAMES, LIMIT_NAMES, ExplicitImages
from bot.policy.store import UsageLine
from bot.readiness import EngineReadiness
from bot.trace import SpeechTracer, TraceReport, TraceUnavailable, check_clip
from bot.ui import TadaModal

FEATURE_CHOICES = [
    app_commands.Choice(name=FEATURE_NAMES[feature], value=feature.value) for feature in Feature
]
EXPLICIT_CHOICES = [
    app_commands.Choice(name="Blocked everywhere", value=ExplicitImages.BLOCKED.value),
    app_commands.Choice(
        name="Allowed in age-restricted channels only", value=ExplicitImages.AGE_RESTRICTED.value
    ),
]
EXPLICIT_NAMES = {
    ExplicitImages.BLOCKED: "blocked everywhere",
    ExplicitImages.AGE_RESTRICTED: "allowed in age-restricted channels only",
}
LIMIT_CHOICES = [app_commands.Choice(name=LIMIT_NAMES[limit], value=limit.value) for limit in Limit]

# Embed fields hold at most 1024 characters; longer lists are cut with a count.

# What ``/tada-admin usage`` calls each action: one, several.
ACTION_LABELS: dict[Action, tuple[str, str]] = {
    Action.VOICE_CLONE: ("voice cloned", "voices cloned"),
    Action.VOICE_SPEAK: ("speech", "speeches"),
    Action.LORA_UPLOAD: ("image set uploaded", "image sets uploaded"),
    Action.LORA_TRAIN: ("training", "trainings"),
    Action.LORA_GENERATE: ("image", "images"),
    Action.DEMO_GENERATE: ("demo image", "demo images"),
}


def role_name(guild_id: int, role_id: int) -> str:
    """A role as shown in a message (@everyone is the guild's id)."""
    return "@everyone" if role_id == guild_id else f"<@&{role_id}>"


def channel_label(guild: discord.Guild | None, channel_id: int) -> str:
    """A channel by name, as the settings page shows it: a mention in an embed is not
    resolved everywhere (the sandbox showed a raw ``<#id>``), and one of a channel deleted
    since would not be at all."""
    channel = guild.get_channel(channel_id) if guild is not None else None
    if channel is not None:
        return f"#{channel.name}"
    if guild is None:
        return f"<#{channel_id}>"  # no cache to read names from: Discord resolves it
    return f"a deleted channel (id {channel_id})"


def render_settings(
    guild_id: int,
    settings: GuildSettings,
    key: SharedKeyInfo,
    readiness: EngineReadiness | None = None,
    classifier: str = "none",
    guild: discord.Guild | None = None,
) -> discord.Embed:
    """The whole configuration on one page, with what the engine lacks (``classifier``:
    the name of the bot's image classifier, "none" when it has none; ``guild``: where
    channel names come from)."""
    embed = discord.Embed(title="Ta-da settings for this server", colour=discord.Colour.blurple())
    channels = []
    roles = []
    for feature in Feature:
        name = FEATURE_NAMES[feature]
        listed = settings.channels_for(feature)
        channels.append(
            f"{name}: " + (", ".join(channel_label(guild, c) for c in listed) or "everywhere")
        )
        allowed = settings.roles_for(feature)
        roles.append(
            f"{name}: " + (", ".join(role_name(guild_id, r) for r in allowed) or "everyone")
        )
    embed.add_field(
        name="Channels", value=clip_lines("\n".join(channels), EMBED_FIELD_LIMIT), inline=False
    )
    embed.add_field(
        name="Roles", value=clip_lines("\n".join(roles), EMBED_FIELD_LIMIT), inline=False
    )
    demo = ", ".join(channel_label(guild, c) for c in settings.demo_channels) or "none"
    shared = (
        f"set {discord.utils.format_dt(key.set_at, 'R')} (never shown)"
        if key.set_at is not None
        else "not set (members use their own accounts)"
    )
    embed.add_field(
        name="Community demo channels",
        value=clip_lines(f"{demo}\nShared key: {shared}", EMBED_FIELD_LIMIT),
        inline=False,
    )
    embed.add_field(
        name="Results",
        value=(
            "shown only to the member who asked"
            if settings.private_results
            else "posted in the channel for everyone"
        ),
        inline=False,
    )
    embed.add_field(
        name="Speech",
        value=(
            "as voice messages (an MP3 where the bot may not post one)"
            if settings.voice_messages
            else "as MP3 attachments"
        ),
        inline=False,
    )
    embed.add_field(
        name="Soundboard, emoji, stickers",
        value=(
            "buttons under results make them (Create Expressions needed)"
            if settings.expressions
            else "off"
        ),
        inline=False,
    )
    checked = (
        f"checked by {classifier} before posting"
        if classifier != "none"
        else "⚠️ not checked: the bot's operator has installed no image classifier"
    )
    embed.add_field(
        name="Explicit images",
        value=f"{EXPLICIT_NAMES[settings.explicit_images]}; images are {checked}",
        inline=False,
    )
    quota_lines = []
    by_role: dict[int, list[str]] = {}
    for rule in settings.quotas:
        amount = "no limit" if rule.amount is None else str(rule.amount)
        by_role.setdefault(rule.role_id, []).append(
            f"{FEATURE_NAMES[rule.feature]} {LIMIT_NAMES[rule.limit]}: {amount}"
        )
    for role_id, rules in by_role.items():
        quota_lines.append(f"{role_name(guild_id, role_id)}: " + "; ".join(rules))
    embed.add_field(
        name="Quotas (the most generous role applies; reset 00:00 UTC, trainings on the 1st)",
        value=clip_lines("\n".join(quota_lines) or "none: no limits", EMBED_FIELD_LIMIT),
        inline=False,
    )
    m = settings.moderation
    built_in = (
        f"on ({len(DEFAULT_BLOCKED_WORDS) - len(m.exempt_words)} words)"
        if m.use_default_words
        else "off"
    )
    lines = [f"Built-in word list: {built_in}"]
    if m.exempt_words:
        lines.append("Allowed anyway: " + ", ".join(m.exempt_words))
    lines.append("Your words: " + (", ".join(m.blocked_words) or "none"))
    lines.append("Your patterns: " + (", ".join(f"`{p}`" for p in m.blocked_patterns) or "none"))
    lines.append(f"Words in force: {len(active_words(m))}")
    embed.add_field(
        name="Moderation", value=clip_lines("\n".join(lines), EMBED_FIELD_LIMIT), inline=False
    )
    lacks = readiness.lacks() if readiness is not None else []
    if lacks:
        embed.add_field(
            name="⚠️ Not set up on the Ta-da engine yet",
            value=clip_lines(
                "\n".join(f"• {lack.what}" for lack in lacks)
                + "\nMembers are told so when they ask for these. Whoever runs the bot sets "
                "them up in the engine's settings; the bot's log says which ones.",
                EMBED_FIELD_LIMIT,
            ),
            inline=False,
        )
    return embed


def demo_warning(readiness: EngineReadiness) -> str:
    """A warning for admins setting up demos on an engine without demo models."""
    missing = readiness.missing_demos()
    if not missing:
        return ""
    return (
        f"\n⚠️ The Ta-da engine has no {' or '.join(missing)} model configured, so `/demo` "
        "fails there until the bot's operator sets it up (`/tada-admin show` lists what "
        "is missing)."
    )


def usage_part(line: UsageLine) -> str:
    """One action's use: how many were asked and, when some were not, how many delivered
    (failed and cancelled requests do not count against quotas)."""
    singular, plural = ACTION_LABELS[line.action]
    text = f"{line.requests:,} {singular if line.requests == 1 else plural}"
    if line.delivered != line.requests:
        text += f" asked, {line.delivered:,} delivered"
    if line.action is Action.VOICE_SPEAK:
        if line.delivered_cost != line.cost:
            text += f" ({line.cost:,} characters asked, {line.delivered_cost:,} delivered)"
        else:
            text += f" ({line.cost:,} characters)"
    if line.on_shared_key:
        text += f" ({line.on_shared_key:,} on the shared key)"
    return text


def render_usage(report: UsageReport) -> str:
    """``/tada-admin usage``: per feature, then the most active members."""
    lines = [
        f"**Use in the last {report.days} day(s)** "
        f"(since {discord.utils.format_dt(report.since, 'f')})"
    ]
    if not report.lines:
        lines.append("Nothing yet.")
        return "\n".join(lines)
    for feature in Feature:
        parts = []
        for line in sorted(
            (x for x in report.lines if x.feature is feature), key=lambda x: x.action.value
        ):
            parts.append(usage_part(line))
        if parts:
            lines.append(f"**{FEATURE_NAMES[feature]}**: " + ", ".join(parts))
    lines.append("**Most active members**")
    lines += [
        f"{rank}. <@{top.discord_user_id}>: {top.requests:,} "
        + ("request" if top.requests == 1 else "requests")
        for rank, top in enumerate(report.top, start=1)
    ]
    return clip_lines("\n".join(lines), CONTENT_LIMIT)


class SharedKeyModal(TadaModal, title="Shared Ta-da key for demo channels"):
    """Asks for the guild's shared key privately; checked, encrypted, never shown again."""

    api_key: discord.ui.TextInput[Any] = discord.ui.TextInput(
        label="API key",
        custom_id="api_key",
        placeholder="tada_...",
        min_length=8,
        max_length=200,
    )

    def __init__(
        self, policy: PolicyService, guild_id: int, readiness: EngineReadiness | None = None
    ) -> None:
        super().__init__()
        self.policy = policy
        self.guild_id = guild_id
        self.readiness = readiness or EngineReadiness()

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        masked = await self.policy.set_shared_key(self.guild_id, SecretStr(self.api_key.value))
        await interaction.edit_original_response(
            content=(
                f"Saved the shared key `{masked}` (encrypted; it will not be shown again). "
                "`/demo` in the community demo channels now runs on it, so members need no "
                "account there." + demo_warning(self.readiness)
            )
        )


def _watermark_line(report: TraceReport) -> str:
    if report.watermarked is None:
        return ""
    answer = "yes" if report.watermarked else "no"
    return f"\nTa-da watermark: {answer} ({report.watermark_score or 0.0:.2f})."


def render_trace(report: TraceReport) -> str:
    """The private answer to ``/tada-admin trace``."""
    if not report.made_here and report.watermarked:
        return (
            f"**Machine-made, not found here.** This {report.clip_seconds:.1f} s clip carries "
            "the watermark of Ta-da speech but matches none made with this bot (deleted "
            "since, or made by another Ta-da engine)." + _watermark_line(report)
        )
    if not report.made_here:
        return (
            f"**Not made here.** This {report.clip_seconds:.1f} s clip matches no speech made "
            "with this bot. A trace can miss speech cut under 3 s, pitch or speed changed by "
            "more than about 2 semitones, or buried under louder sound; a person imitating "
            "a voice is never found (see the admin guide's *Tracing speech* page)."
            + _watermark_line(report)
        )
    lines = ["**Made with this bot.**" + _watermark_line(report)]
    for found in report.matches:
        when = discord.utils.format_dt(found.made_at, "f")
        match = f"{round(found.score * 100)}% fingerprint match"
        if found.elsewhere:
            lines.append(
                f"• Speech in the voice **{found.voice_name}**, made {when} in another server "
                f"or a DM (who and where stay there) · {match}"
            )
            continue
        who = f"<@{found.member_id}>" if found.member_id else "a member"
        where = f" in <#{found.channel_id}>" if found.channel_id else ""
        lines.append(
            f"• Asked by {who}{where}, {when}, in the voice **{found.voice_name}** · {match}"
            f" · generation `{found.generation_id}`"
        )
    return clip_lines("\n".join(lines), CONTENT_LIMIT)


_MESSAGE_LINK = re.compile(r"https://(?:\w+\.)?discord(?:app)?\.com/channels/(\d+)/(\d+)/(\d+)/?$")


async def linked_audio(
    interaction: discord.Interaction[Any], guild_id: int, link: str
) -> discord.Attachment:
    """The first audio attachment of the message ``link`` points to, in this server."""
    found = _MESSAGE_LINK.match(link.strip())
    if found is None or int(found[1]) != guild_id:
        raise UserFacingError("That is not a link to a message of this server.")
    channel = interaction.client.get_channel(int(found[2]))
    if not isinstance(channel, discord.abc.Messageable):
        raise UserFacingError("I cannot see the channel of that message.")
    try:
        message = await channel.fetch_message(int(found[3]))
    except (discord.NotFound, discord.Forbidden) as exc:
        raise UserFacingError(
            "I cannot read that message (deleted, or not visible to me)."
        ) from exc
    for attachment in message.attachments:
        if suffix_of(attachment.filename) in AUDIO_SUFFIXES:
            return attachment
    raise UserFacingError("That message holds no audio file.")


def _guild(interaction: discord.Interaction[Any]) -> int:
    if interaction.guild_id is None:
        raise UserFacingError("Server settings can only be changed in a server.")
    return interaction.guild_id


async def _answer(interaction: discord.Interaction[Any], text: str) -> None:
    await interaction.response.send_message(text, ephemeral=True)


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class AdminCog(
    commands.GroupCog, group_name="tada-admin", group_description="Set up Ta-da for this server"
):
    """The ``/tada-admin`` command group and its subgroups."""

    channels = app_commands.Group(name="channels", description="Where each feature works")
    roles = app_commands.Group(name="roles", description="Who may use each feature")
    demo = app_commands.Group(name="demo", description="Community demo channels and shared key")
    quota = app_commands.Group(name="quota", description="Limits per role and feature")
    moderation = app_commands.Group(name="moderation", description="Blocked words and patterns")

    def __init__(
        self,
        policy: PolicyService,
        readiness: EngineReadiness | None = None,
        *,
        classifier: str = "none",
        tracer: SpeechTracer | None = None,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.readiness = readiness or EngineReadiness()
        self.classifier = classifier
        self.tracer = tracer

    # ------------------------------------------------------------------ trace

    @app_commands.command(name="trace")
    @app_commands.describe(
        audio="The clip to check: an audio file or a saved voice message",
        message_link="Or the link to a message of this server that holds the clip",
    )
    async def trace(
        self,
        interaction: discord.Interaction[Any],
        audio: discord.Attachment | None = None,
        message_link: app_commands.Range[str, 1, 200] | None = None,
    ) -> None:
        """Was this speech made with the bot? Which member, which voice, when, where."""
        guild_id = _guild(interaction)
        if self.tracer is None:
            raise TraceUnavailable("Tracing is not set up on this bot.")
        if (audio is None) == (message_link is None):
            raise UserFacingError("Give the clip as `audio`, or a `message_link` to it (one).")
        if audio is None:
            assert message_link is not None
            audio = await linked_audio(interaction, guild_id, message_link)
        check_clip(audio.filename, audio.size)
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = await audio.read()
        report = await self.tracer.trace(guild_id, data)
        await interaction.followup.send(
            render_trace(report), ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    # ------------------------------------------------------------------ overview

    @app_commands.command(name="show")
    async def show(self, interaction: discord.Interaction[Any]) -> None:
        """The whole Ta-da configuration of this server on one page."""
        guild_id = _guild(interaction)
        settings = await self.policy.settings(guild_id)
        key = await self.policy.shared_key_info(guild_id)
        await interaction.response.send_message(
            embed=render_settings(
                guild_id, settings, key, self.readiness, self.classifier, interaction.guild
            ),
            ephemeral=True,
        )

    @app_commands.command(name="usage")
    @app_commands.describe(days=f"How many days back to look (1 to {MAX_USAGE_DAYS}; default 7)")
    async def usage(
        self,
        interaction: discord.Interaction[Any],
        days: app_commands.Range[int, 1, MAX_USAGE_DAYS] = 7,
    ) -> None:
        """Use per feature and the most active members over a period."""
        report = await self.policy.usage(_guild(interaction), days)
        await _answer(interaction, render_usage(report))

    @app_commands.command(name="results")
    @app_commands.describe(private="On: results are shown only to the member who asked")
    async def results(self, interaction: discord.Interaction[Any], private: bool) -> None:
        """Post results in the channel, or show them only to the member who asked."""
        await self.policy.set_private_results(_guild(interaction), private)
        await _answer(
            interaction,
            "Results are now shown only to the member who asked."
            if private
            else "Results are now posted in the channel for everyone.",
        )

    @app_commands.command(name="voice-messages")
    @app_commands.describe(enabled="On: speech is posted as Discord voice messages")
    async def voice_messages(self, interaction: discord.Interaction[Any], enabled: bool) -> None:
        """Post speech as Discord voice messages (with an MP3 where that is not possible)."""
        await self.policy.set_voice_messages(_guild(interaction), enabled)
        await _answer(
            interaction,
            "Speech is now posted as voice messages where I have **Send Voice Messages** "
            "(as an MP3 elsewhere, and for private results)."
            if enabled
            else "Speech is now posted as MP3 attachments.",
        )

    @app_commands.command(name="expressions")
    @app_commands.describe(
        enabled="On: buttons under results make soundboard sounds, emoji and stickers"
    )
    async def expressions(self, interaction: discord.Interaction[Any], enabled: bool) -> None:
        """Let members turn speech into soundboard sounds and images into emoji or stickers."""
        await self.policy.set_expressions(_guild(interaction), enabled)
        await _answer(
            interaction,
            "Results now carry **Soundboard** (speech) and **Emoji** / **Sticker** (images) "
            "buttons. Members need Discord's **Create Expressions** permission and the "
            "feature's roles (`/tada-admin roles`); I need **Create Expressions** too."
            if enabled
            else "Results no longer carry soundboard, emoji and sticker buttons.",
        )

    @app_commands.command(name="explicit-images")
    @app_commands.describe(allow="Where images judged explicit may be posted")
    @app_commands.choices(allow=EXPLICIT_CHOICES)
    async def explicit_images(self, interaction: discord.Interaction[Any], allow: str) -> None:
        """Block images judged explicit everywhere, or allow them in age-restricted channels."""
        where = ExplicitImages(allow)
        await self.policy.set_explicit_images(_guild(interaction), where)
        await _answer(
            interaction,
            "Images judged explicit are now never posted; the member is told privately."
            if where is ExplicitImages.BLOCKED
            else "Images judged explicit are now posted in age-restricted channels only; "
            "elsewhere the member is told privately.",
        )

    # ------------------------------------------------------------------ channels

    @channels.command(name="allow")
    @app_commands.describe(feature="The feature", channel="A channel where it should work")
    @app_commands.choices(feature=FEATURE_CHOICES)
    async def channels_allow(
        self,
        interaction: discord.Interaction[Any],
        feature: app_commands.Choice[str],
        channel: discord.TextChannel,
    ) -> None:
        """Let a feature work in a channel (once listed, only in listed channels)."""
        settings = await self.policy.allow_channel(
            _guild(interaction), Feature(feature.value), channel.id
        )
        listed = settings.channels_for(Feature(feature.value))
        await _answer(
            interaction,
            f"{feature.name} now works only in: {', '.join(f'<#{c}>' for c in listed)}.",
        )

    @channels.command(name="remove")
    @app_commands.describe(feature="The feature", channel="The channel to take off its list")
    @app_commands.choices(feature=FEATURE_CHOICES)
    async def channels_remove(
        self,
        interaction: discord.Interaction[Any],
        feature: app_commands.Choice[str],
        channel: discord.TextChannel,
    ) -> None:
        """Take a channel off a feature's list (an empty list means everywhere)."""
        settings = await self.policy.remove_channel(
            _guild(interaction), Feature(feature.value), channel.id
        )
        listed = settings.channels_for(Feature(feature.value))
        where = ", ".join(f"<#{c}>" for c in listed) or "every channel"
        await _answer(interaction, f"{feature.name} now works in: {where}.")

    @channels.command(name="everywhere")
    @app_commands.describe(feature="The feature")
    @app_commands.choices(feature=FEATURE_CHOICES)
    async def channels_everywhere(
        self, interaction: discord.Interaction[Any], feature: app_commands.Choice[str]
    ) -> None:
        """Let a feature work in every channel again."""
        await self.policy.channels_everywhere(_guild(interaction), Feature(feature.value))
        await _answer(interaction, f"{feature.name} now works in every channel.")

    # ------------------------------------------------------------------ roles

    @roles.command(name="allow")
    @app_commands.describe(feature="The feature", role="A role whose members may use it")
    @app_commands.choices(feature=FEATURE_CHOICES)
    async def roles_allow(
        self,
        interaction: discord.Interaction[Any],
        feature: app_commands.Choice[str],
        role: discord.Role,
    ) -> None:
        """Let a role use a feature (once listed, only listed roles may)."""
        guild_id = _guild(interaction)
        settings = await self.policy.allow_role(guild_id, Feature(feature.value), role.id)
        listed = settings.roles_for(Feature(feature.value))
        await _answer(
            interaction,
            f"{feature.name} is now for: {', '.join(role_name(guild_id, r) for r in listed)}.",
        )

    @roles.command(name="remove")
    @app_commands.describe(feature="The feature", role="The role to take off its list")
    @app_commands.choices(feature=FEATURE_CHOICES)
    async def roles_remove(
        self,
        interaction: discord.Interaction[Any],
        feature: app_commands.Choice[str],
        role: discord.Role,
    ) -> None:
        """Take a role off a feature's list (an empty list means everyone)."""
        guild_id = _guild(interaction)
        settings = await self.policy.remove_role(guild_id, Feature(feature.value), role.id)
        listed = settings.roles_for(Feature(feature.value))
        who = ", ".join(role_name(guild_id, r) for r in listed) or "everyone"
        await _answer(interaction, f"{feature.name} is now for: {who}.")

    @roles.command(name="everyone")
    @app_commands.describe(feature="The feature")
    @app_commands.choices(feature=FEATURE_CHOICES)
    async def roles_everyone(
        self, interaction: discord.Interaction[Any], feature: app_commands.Choice[str]
    ) -> None:
        """Let every member use a feature again."""
        await self.policy.roles_everyone(_guild(interaction), Feature(feature.value))
        await _answer(interaction, f"{feature.name} is now for everyone.")

    # ------------------------------------------------------------------ demo

    @demo.command(name="add")
    @app_commands.describe(channel="The channel where anyone may try /demo")
    async def demo_add(
        self, interaction: discord.Interaction[Any], channel: discord.TextChannel
    ) -> None:
        """Make a channel a community demo channel (/demo there uses the shared key)."""
        guild_id = _guild(interaction)
        await self.policy.add_demo_channel(guild_id, channel.id)
        key = await self.policy.shared_key_info(guild_id)
        hint = (
            ""
            if key.set_at is not None
            else "\nNo shared key yet: set one with `/tada-admin demo key` so members "
            "need no account there."
        )
        await _answer(
            interaction,
            f"{channel.mention} is now a community demo channel.{hint}"
            + demo_warning(self.readiness),
        )

    @demo.command(name="remove")
    @app_commands.describe(channel="The demo channel to make ordinary again")
    async def demo_remove(
        self, interaction: discord.Interaction[Any], channel: discord.TextChannel
    ) -> None:
        """Make a community demo channel an ordinary channel again."""
        await self.policy.remove_demo_channel(_guild(interaction), channel.id)
        await _answer(interaction, f"{channel.mention} is no longer a community demo channel.")

    @demo.command(name="key")
    async def demo_key(self, interaction: discord.Interaction[Any]) -> None:
        """Set the server's shared Ta-da key for demo channels (asked privately)."""
        await interaction.response.send_modal(
            SharedKeyModal(self.policy, _guild(interaction), self.readiness)
        )

    @demo.command(name="forget-key")
    async def demo_forget_key(self, interaction: discord.Interaction[Any]) -> None:
        """Delete the server's shared key (demo channels then need members' own accounts)."""
        had = await self.policy.forget_shared_key(_guild(interaction))
        await _answer(
            interaction,
            "The shared key is deleted." if had else "There was no shared key to delete.",
        )

    # ------------------------------------------------------------------ quotas

    @quota.command(name="set")
    @app_commands.describe(
        role="Whose limit (@everyone for every member)",
        feature="The feature",
        limit="What to limit",
        amount="How many (leave empty for no limit; 0 blocks)",
    )
    @app_commands.choices(feature=FEATURE_CHOICES, limit=LIMIT_CHOICES)
    async def quota_set(
        self,
        interaction: discord.Interaction[Any],
        role: discord.Role,
        feature: app_commands.Choice[str],
        limit: app_commands.Choice[str],
        amount: app_commands.Range[int, 0, 10_000_000] | None = None,
    ) -> None:
        """Set a role's limit for a feature; the most generous of a member's roles applies."""
        guild_id = _guild(interaction)
        await self.policy.set_quota(
            guild_id, role.id, Feature(feature.value), Limit(limit.value), amount
        )
        value = "no limit" if amount is None else f"{amount:,}"
        await _answer(
            interaction,
            f"{role_name(guild_id, role.id)}: {feature.name} {limit.name} is now {value}.",
        )

    @quota.command(name="remove")
    @app_commands.describe(
        role="Whose rule",
        feature="The feature",
        limit="Which limit (leave empty for all of the feature's)",
    )
    @app_commands.choices(feature=FEATURE_CHOICES, limit=LIMIT_CHOICES)
    async def quota_remove(
        self,
        interaction: discord.Interaction[Any],
        role: discord.Role,
        feature: app_commands.Choice[str],
        limit: app_commands.Choice[str] | None = None,
    ) -> None:
        """Remove a role's rules for a feature (the role then neither gives nor limits)."""
        guild_id = _guild(interaction)
        removed = await self.policy.remove_quota(
            guild_id, role.id, Feature(feature.value), Limit(limit.value) if limit else None
        )
        await _answer(
            interaction,
            f"Removed {removed} rule(s) of {role_name(guild_id, role.id)} for {feature.name}.",
        )

    # ------------------------------------------------------------------ moderation

    @moderation.command(name="block")
    @app_commands.describe(word="A word or phrase (whole words, any case)")
    async def moderation_block(
        self, interaction: discord.Interaction[Any], word: app_commands.Range[str, 1, 100]
    ) -> None:
        """Block a word or phrase in prompts and spoken text."""
        await self.policy.block_word(_guild(interaction), word)
        await _answer(interaction, f"Blocked “{word.strip()}”.")

    @moderation.command(name="pattern")
    @app_commands.describe(pattern="A regular expression (case-insensitive)")
    async def moderation_pattern(
        self, interaction: discord.Interaction[Any], pattern: app_commands.Range[str, 1, 200]
    ) -> None:
        """Block a regular expression in prompts and spoken text."""
        await self.policy.block_pattern(_guild(interaction), pattern)
        await _answer(interaction, f"Blocked the pattern `{pattern.strip()}`.")

    @moderation.command(name="allow")
    @app_commands.describe(term="A word or pattern to allow again (built-in words too)")
    async def moderation_allow(
        self, interaction: discord.Interaction[Any], term: app_commands.Range[str, 1, 200]
    ) -> None:
        """Allow a blocked word or pattern again, including a word of the built-in list."""
        _, changed = await self.policy.allow_term(_guild(interaction), term)
        await _answer(
            interaction,
            f"“{term.strip()}” is allowed now."
            if changed
            else f"“{term.strip()}” was not blocked.",
        )

    @moderation.command(name="defaults")
    @app_commands.describe(enabled="Use the built-in list of blocked words")
    async def moderation_defaults(
        self, interaction: discord.Interaction[Any], enabled: bool
    ) -> None:
        """Turn the built-in blocked-word list on or off."""
        await self.policy.use_default_words(_guild(interaction), enabled)
        await _answer(
            interaction,
            "The built-in word list is on." if enabled else "The built-in word list is off.",
        )


async def setup(bot: commands.Bot) -> None:
    """Extension entry point."""
    if not isinstance(bot, TadaBot):
        raise TypeError("cogs.admin needs a TadaBot (it reads bot.services.policy)")
    await bot.add_cog(
        AdminCog(
            bot.services.policy,
            bot.services.readiness,
            classifier=bot.services.safety.name,
            tracer=bot.services.tracer,
        )
    )
