"""``/tada``: register or link a Ta-da account, see it, forget it, and get help.

Thin: each command parses the interaction, calls :class:`bot.accounts.AccountService`,
and renders the answer. Every answer is ephemeral: accounts are nobody else's business.
"""

from __future__ import annotations

import contextlib
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands
from pydantic import SecretStr

from bot.accounts import AccountService, AccountSummary
from bot.app import TadaBot
from bot.errors import UserFacingError
from bot.messages import CONTENT_LIMIT, clip
from bot.ui import TadaModal, TadaView

NEXT_STEPS = (
    "Next: `/voice clone` to clone your voice from a short recording, or `/lora upload` "
    "to train an image style on your pictures. `/tada help` lists everything."
)


class RegisterModal(TadaModal, title="Create a Ta-da account"):
    """Asks for the email privately (a slash option would show it in the channel)."""

    email: discord.ui.TextInput[Any] = discord.ui.TextInput(
        label="Email address",
        custom_id="email",
        placeholder="you@example.com",
        min_length=3,
        max_length=320,
    )

    def __init__(self, accounts: AccountService) -> None:
        super().__init__()
        self.accounts = accounts

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        account = await self.accounts.register(interaction.user.id, self.email.value)
        key = account.api_key.get_secret_value()
        await interaction.edit_original_response(
            content=(
                f"Your Ta-da account for **{account.email}** is ready and linked to you.\n"
                f"Your API key (shown once, only to you): ||{key}||\n"
                "The bot keeps it encrypted; save it somewhere safe if you want to use the "
                f"Ta-da API directly.\n{NEXT_STEPS}"
            )
        )


class LinkModal(TadaModal, title="Link your Ta-da API key"):
    """Asks for an existing API key privately; the key is checked before it is kept."""

    api_key: discord.ui.TextInput[Any] = discord.ui.TextInput(
        label="API key",
        custom_id="api_key",
        placeholder="tada_...",
        min_length=8,
        max_length=200,
    )

    def __init__(self, accounts: AccountService) -> None:
        super().__init__()
        self.accounts = accounts

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        masked = await self.accounts.link(interaction.user.id, SecretStr(self.api_key.value))
        await interaction.edit_original_response(
            content=f"Linked: the bot now acts for you with the key `{masked}`.\n{NEXT_STEPS}"
        )


class ForgetView(TadaView):
    """Confirm or cancel ``/tada forget``; only the member who asked can press."""

    def __init__(self, accounts: AccountService, owner_id: int) -> None:
        super().__init__(timeout=120)
        self.accounts = accounts
        self.owner_id = owner_id
        self.origin: discord.Interaction[Any] | None = None

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        return interaction.user.id == self.owner_id

    @discord.ui.button(
        label="Delete my data", style=discord.ButtonStyle.danger, custom_id="forget:yes"
    )
    async def confirm(
        self, interaction: discord.Interaction[Any], _: discord.ui.Button[Any]
    ) -> None:
        self.stop()
        await self.accounts.forget(interaction.user.id)
        await interaction.response.edit_message(
            content=(
                "Done: your API key and everything the bot kept about you are deleted. "
                "Your Ta-da account itself still exists; `/tada link` brings it back."
            ),
            view=None,
        )

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary, custom_id="forget:no")
    async def cancel(
        self, interaction: discord.Interaction[Any], _: discord.ui.Button[Any]
    ) -> None:
        self.stop()
        await interaction.response.edit_message(content="Nothing was deleted.", view=None)

    async def on_timeout(self) -> None:
        if self.origin is not None:
            # The ephemeral message may be gone already; then there is nothing to tidy.
            with contextlib.suppress(discord.HTTPException):
                await self.origin.edit_original_response(
                    content="No answer, so nothing was deleted.", view=None
                )


def render_summary(summary: AccountSummary) -> str:
    """The text of ``/tada account``."""

    def count(value: int | None) -> str:
        return "unavailable" if value is None else str(value)

    how = "registered through the bot" if summary.linked_via == "register" else "linked key"
    lines = [
        "**Your Ta-da account**",
        f"Status: linked ({how}) since {discord.utils.format_dt(summary.linked_at, 'D')}",
        f"API key: `{summary.masked_key}`",
    ]
    if summary.email:
        lines.append(f"Email: {summary.email}")
    lines += [
        f"Voices: {count(summary.voices)}",
        f"LoRAs: {count(summary.loras)}",
        f"Generations: {count(summary.generations)}",
    ]
    return "\n".join(lines)


def render_help(tree: app_commands.CommandTree[Any], limit: int = CONTENT_LIMIT) -> str:
    """Every slash command with its description, read from the command tree, in one
    message: descriptions are shortened (never a command left out) to fit ``limit``."""
    intro = [
        "**Ta-da for Discord**: clone your voice and make it speak, train an image style "
        "(LoRA) on your pictures and generate with it, right here.",
        "Start with `/tada register` (new account) or `/tada link` (existing API key).",
        "",
    ]
    entries: list[tuple[str, str]] = []
    for command in sorted(tree.get_commands(), key=lambda c: c.name):
        if command.default_permissions is not None and not isinstance(
            command, app_commands.ContextMenu
        ):
            # Staff commands (``/tada-admin``): one line, members cannot use them anyway.
            entries.append((command.name, f"{command.description} (server managers)"))
            continue
        if isinstance(command, app_commands.Group):
            for sub in command.walk_commands():
                if isinstance(sub, app_commands.Command):
                    entries.append((sub.qualified_name, sub.description))
        elif isinstance(command, app_commands.Command):
            entries.append((command.qualified_name, command.description))
    for width in (1000, 90, 70, 50, 35, 0):
        lines = [
            f"`/{name}`: {clip(text, width)}" if width else f"`/{name}`" for name, text in entries
        ]
        body = "\n".join(intro + lines)
        if len(body) <= limit:
            return body
    return clip(body, limit)


class AccountCog(commands.GroupCog, group_name="tada", group_description="Your Ta-da account"):
    """The ``/tada`` command group."""

    def __init__(self, accounts: AccountService) -> None:
        super().__init__()
        self.accounts = accounts

    @app_commands.command(name="register")
    async def register(self, interaction: discord.Interaction[Any]) -> None:
        """Create a Ta-da account (asks for your email privately)."""
        existing = await self.accounts.account(interaction.user.id)
        if existing is not None:
            raise UserFacingError(
                f"You already have a Ta-da account linked (key `{existing.masked_key}`). "
                "Use `/tada link` to switch keys, or `/tada forget` first."
            )
        await interaction.response.send_modal(RegisterModal(self.accounts))

    @app_commands.command(name="link")
    async def link(self, interaction: discord.Interaction[Any]) -> None:
        """Link a Ta-da API key you already have (asked privately, checked, kept encrypted)."""
        await interaction.response.send_modal(LinkModal(self.accounts))

    @app_commands.command(name="account")
    async def account(self, interaction: discord.Interaction[Any]) -> None:
        """See your linked account: masked key, voices, LoRAs and generations."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        summary = await self.accounts.summary(interaction.user.id)
        await interaction.edit_original_response(content=render_summary(summary))

    @app_commands.command(name="forget")
    async def forget(self, interaction: discord.Interaction[Any]) -> None:
        """Delete your API key and everything the bot keeps about you (asks to confirm)."""
        view = ForgetView(self.accounts, interaction.user.id)
        view.origin = interaction
        await interaction.response.send_message(
            "This deletes your API key and everything the bot keeps about you "
            "(your Ta-da account and its voices and LoRAs stay). Sure?",
            view=view,
            ephemeral=True,
        )

    @app_commands.command(name="help")
    async def help(self, interaction: discord.Interaction[Any]) -> None:
        """What this bot can do, and its commands."""
        await interaction.response.send_message(
            render_help(
                interaction.client.tree
                if isinstance(interaction.client, commands.Bot | commands.AutoShardedBot)
                else app_commands.CommandTree(interaction.client)
            ),
            ephemeral=True,
        )


async def setup(bot: commands.Bot) -> None:
    """Extension entry point."""
    if not isinstance(bot, TadaBot):
        raise TypeError("cogs.account needs a TadaBot (it reads bot.services)")
    await bot.add_cog(AccountCog(bot.services.accounts))
