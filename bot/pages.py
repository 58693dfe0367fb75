"""Paged lists (history, gallery): one page at a time, Previous/Next for the member who asked."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import discord
from discord import app_commands

from bot.messages import CONTENT_LIMIT, clip
from bot.ui import TadaView

# A page's text; the page number below it fits in the rest of a message.
PAGE_LIMIT = CONTENT_LIMIT - 100


class PagedView(TadaView):
    """Shows ``pages`` one at a time; only ``owner`` can turn them."""

    def __init__(self, pages: Sequence[str], owner: int) -> None:
        super().__init__(timeout=600)
        self.pages = list(pages) or ["Nothing here yet."]
        self.owner = owner
        self.index = 0
        self._sync()

    def page(self) -> str:
        """The current page with its number."""
        footer = f"\n-# page {self.index + 1}/{len(self.pages)}" if len(self.pages) > 1 else ""
        return self.pages[self.index] + footer

    def _sync(self) -> None:
        self.previous.disabled = self.index == 0
        self.next.disabled = self.index >= len(self.pages) - 1

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        return interaction.user.id == self.owner

    @discord.ui.button(label="Previous", style=discord.ButtonStyle.secondary)
    async def previous(
        self, interaction: discord.Interaction[Any], _: discord.ui.Button[Any]
    ) -> None:
        self.index = max(0, self.index - 1)
        self._sync()
        await interaction.response.edit_message(content=self.page(), view=self)

    @discord.ui.button(label="Next", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction[Any], _: discord.ui.Button[Any]) -> None:
        self.index = min(len(self.pages) - 1, self.index + 1)
        self._sync()
        await interaction.response.edit_message(content=self.page(), view=self)


def paginate(lines: Sequence[str], *, per_page: int = 10, limit: int = PAGE_LIMIT) -> list[str]:
    """Group lines into pages of at most ``per_page`` lines and ``limit`` characters."""
    pages: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        line = clip(line, limit)
        if current and (len(current) >= per_page or size + len(line) + 1 > limit):
            pages.append("\n".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    if current:
        pages.append("\n".join(current))
    return pages


def matching_choices(
    named: Iterable[tuple[str, str]], current: str
) -> list[app_commands.Choice[str]]:
    """Autocomplete choices from ``(name, id)`` pairs: those whose name (any case) or id
    contains what the member typed, names clipped to Discord's 100, at most 25."""
    needle = current.lower()
    return [
        app_commands.Choice(name=clip(name, 100), value=value)
        for name, value in named
        if needle in name.lower() or needle in value
    ][:25]
