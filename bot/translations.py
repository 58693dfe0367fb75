"""Discord localisations of the slash commands: names and descriptions of every command,
group, subcommand, option and choice, in the languages the voice models speak.

The strings live in ``bot/locales/<Discord locale>.json``, one file per language, keyed by
the English string within its section (where Discord shows it)::

    {"commands": {"speak": "parler"}, "descriptions": {...}, "options": {...},
     "option_descriptions": {...}, "choices": {...}}

:class:`CommandTranslator` is discord.py's :class:`~discord.app_commands.Translator`:
``CommandTree.sync`` asks it for every string in every locale, and a ``None`` answer
leaves Discord showing the English. Only the command tree is translated: member-facing
replies (the ``other`` context) stay as they are. The composition root installs it
(:mod:`bot.app`); ``tests/bot/test_translations.py`` fails on a string a locale lacks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import discord
from discord import app_commands
from discord.app_commands import TranslationContextLocation, TranslationContextTypes

# The folder of the locale files (shipped as package data).
LOCALES_DIR = Path(__file__).with_name("locales")

# The languages the voice back ends speak (Pocket TTS: English, French, German, Spanish,
# Italian, Portuguese, Dutch), as Discord's locales; English is the commands' own language.
LOCALES: tuple[discord.Locale, ...] = (
    discord.Locale.french,
    discord.Locale.german,
    discord.Locale.spain_spanish,
    discord.Locale.italian,
    discord.Locale.brazil_portuguese,
    discord.Locale.dutch,
)

# A Discord locale that is served another's file (Latin American Spanish: Spain's).
SHARED: Mapping[discord.Locale, discord.Locale] = {
    discord.Locale.latin_american_spanish: discord.Locale.spain_spanish,
}

# Where a string is shown, as the section of the locale files that holds it.
SECTIONS: Mapping[TranslationContextLocation, str] = {
    TranslationContextLocation.command_name: "commands",
    TranslationContextLocation.group_name: "commands",
    TranslationContextLocation.command_description: "descriptions",
    TranslationContextLocation.group_description: "descriptions",
    TranslationContextLocation.parameter_name: "options",
    TranslationContextLocation.parameter_description: "option_descriptions",
    TranslationContextLocation.choice_name: "choices",
}


class CatalogueError(ValueError):
    """A locale file that is not a JSON object of known sections of strings."""


def language_neutral(text: str) -> bool:
    """Whether ``text`` reads the same in every language (no letters: ``16:9``, ``…``);
    such a string needs no translation and gets none."""
    return not any(character.isalpha() for character in text)


@dataclass(frozen=True)
class Catalogue:
    """The translations of every locale file of a folder."""

    entries: Mapping[discord.Locale, Mapping[str, Mapping[str, str]]] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: Path = LOCALES_DIR) -> Catalogue:
        """Read ``<locale>.json`` for each of :data:`LOCALES` present in ``directory``.

        Raises :class:`CatalogueError` naming the file on anything but sections of strings.
        """
        entries: dict[discord.Locale, dict[str, dict[str, str]]] = {}
        known = set(SECTIONS.values())
        for locale in LOCALES:
            path = directory / f"{locale.value}.json"
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as error:
                raise CatalogueError(f"{path.name}: not JSON ({error})") from None
            if not isinstance(data, dict):
                raise CatalogueError(f"{path.name}: not an object of sections")
            sections: dict[str, dict[str, str]] = {}
            for section, strings in data.items():
                if section not in known:
                    raise CatalogueError(
                        f"{path.name}: unknown section {section!r} (one of {sorted(known)})"
                    )
                if not isinstance(strings, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in strings.items()
                ):
                    raise CatalogueError(f"{path.name}: [{section}] maps strings to strings")
                sections[section] = strings
            entries[locale] = sections
        return cls(entries)

    def lookup(self, locale: discord.Locale, section: str, english: str) -> str | None:
        """The translation of ``english`` in ``section`` for ``locale``; ``None`` if none."""
        return self.entries.get(SHARED.get(locale, locale), {}).get(section, {}).get(english)

    def translated(self) -> Iterator[tuple[discord.Locale, str, str]]:
        """Every (locale, section, English string) the files translate."""
        for locale, sections in self.entries.items():
            for section, strings in sections.items():
                for english in strings:
                    yield locale, section, english


class CommandTranslator(app_commands.Translator):
    """The command tree's translator over the locale files of ``directory``, read (off the
    event loop) when the tree installs it."""

    def __init__(self, directory: Path = LOCALES_DIR) -> None:
        self._directory = directory
        self._catalogue = Catalogue()

    async def load(self) -> None:
        self._catalogue = await asyncio.to_thread(Catalogue.read, self._directory)

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: TranslationContextTypes,
    ) -> str | None:
        section = SECTIONS.get(context.location)
        if section is None or language_neutral(string.message):
            return None
        return self._catalogue.lookup(locale, section, string.message)
