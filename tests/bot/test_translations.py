"""Discord localisations of the slash commands (issue 28, item 4): every command, group,
subcommand, option and choice of the tree the bot really builds has its name and
description in each locale the voice models speak, within Discord's rules, and the payload
the bot syncs at start-up carries them.

The payload is the one discord.py PUTs to Discord (SimCord records it), built by the real
composition root with its translator. A string missing from ``bot/locales/<locale>.json``
fails here with the string, where it is and which file lacks it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
import httpx
import pytest
import regex
from discord import app_commands
from discord.app_commands import TranslationContext, TranslationContextLocation
from fastapi import FastAPI

from bot.config import BotConfig
from bot.translations import (
    LOCALES,
    LOCALES_DIR,
    SECTIONS,
    Catalogue,
    CatalogueError,
    CommandTranslator,
    language_neutral,
)
from tests.bot.conftest import synced_payload

# Discord's rule for a chat-input command's or option's name (its API documentation).
NAME = regex.compile(r"^[-_\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$")
SUBCOMMAND, GROUP = 1, 2
WANTED = {"fr", "de", "es-ES", "it", "pt-BR", "nl"}


@dataclass(frozen=True)
class Text:
    """One translatable string of the payload: its section in a locale file, where it is,
    and its localisations as synced."""

    section: str
    english: str
    path: str
    localised: dict[str, str]


def texts(node: dict[str, Any], parent: str = "") -> Iterator[Text]:
    """Every translatable string of a command payload and of what it holds."""
    path = f"{parent} {node['name']}".strip()
    command = parent == "" or node["type"] in (SUBCOMMAND, GROUP)
    name, description = (
        ("commands", "descriptions") if command else ("options", "option_descriptions")
    )
    yield Text(name, node["name"], path, node.get("name_localizations") or {})
    yield Text(description, node["description"], path, node.get("description_localizations") or {})
    for choice in node.get("choices") or []:
        yield Text(
            "choices",
            choice["name"],
            f"{path} [{choice['name']}]",
            choice.get("name_localizations") or {},
        )
    for option in node.get("options") or []:
        yield from texts(option, path)


def siblings(payload: list[dict[str, Any]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Each list of names Discord wants unique: the top-level commands, then each node's
    options (subcommands, groups or parameters)."""
    yield "/", payload
    stack = [(c["name"], c) for c in payload]
    while stack:
        path, node = stack.pop()
        options = node.get("options") or []
        yield path, options
        stack.extend((f"{path} {o['name']}", o) for o in options)


@pytest.fixture
async def payload(
    bot_config: BotConfig, engine: tuple[FastAPI, httpx.AsyncClient]
) -> list[dict[str, Any]]:
    _, api = engine
    return await synced_payload(bot_config, api)


def test_the_six_locales_of_the_voice_models_are_covered() -> None:
    assert {locale.value for locale in LOCALES} == WANTED
    for locale in LOCALES:
        assert (LOCALES_DIR / f"{locale.value}.json").is_file(), locale


async def test_every_command_string_is_translated_and_synced(payload: list[dict[str, Any]]) -> None:
    found = [text for command in payload for text in texts(command)]
    assert {"voice speak", "tada-admin quota set limit"} <= {t.path for t in found}
    missing = [
        f"{code}.json [{t.section}] {t.english!r} (at /{t.path})"
        for t in found
        if not language_neutral(t.english)
        for code in sorted(WANTED)
        if code not in t.localised
    ]
    assert not missing, "strings without a translation (add them to bot/locales/):\n" + "\n".join(
        missing
    )
    # Spanish-speaking members outside Spain see the Spanish strings too.
    speak = next(t for t in found if t.path == "voice speak" and t.section == "commands")
    assert speak.localised["es-419"] == speak.localised["es-ES"]
    # Nothing is sent for the locales without a file: Discord shows the English.
    assert set(speak.localised) == WANTED | {"es-419"}


async def test_localised_names_and_descriptions_obey_discords_rules(
    payload: list[dict[str, Any]],
) -> None:
    broken: list[str] = []
    for text in (t for command in payload for t in texts(command)):
        for code, value in text.localised.items():
            where = f"{code} {text.english!r} -> {value!r} (at /{text.path})"
            if text.section in ("commands", "options"):
                if not NAME.fullmatch(value) or value != value.lower():
                    broken.append(f"name not lowercase [-_letters digits]{{1,32}}: {where}")
            elif not 1 <= len(value) <= 100:
                broken.append(f"longer than 100 characters: {where}")
            if value != value.strip():
                broken.append(f"spaces around: {where}")
    assert not broken, "\n".join(broken)


async def test_localised_names_are_unique_among_siblings(payload: list[dict[str, Any]]) -> None:
    clashes: list[str] = []
    for path, nodes in siblings(payload):
        for code in sorted(WANTED):
            names = [(n.get("name_localizations") or {}).get(code, n["name"]) for n in nodes]
            clashes.extend(
                f"{code}: {name!r} twice under {path}"
                for name in set(names)
                if names.count(name) > 1
            )
        for node in nodes:
            for code in sorted(WANTED):
                labels = [
                    (c.get("name_localizations") or {}).get(code, c["name"])
                    for c in node.get("choices") or []
                ]
                clashes.extend(
                    f"{code}: choice {label!r} twice in {path} {node['name']}"
                    for label in set(labels)
                    if labels.count(label) > 1
                )
    assert not clashes, "\n".join(clashes)


async def test_every_translation_is_still_used(payload: list[dict[str, Any]]) -> None:
    """A string the commands no longer have (renamed, reworded, removed) leaves no stale
    entry behind in a locale file."""
    used = {(t.section, t.english) for command in payload for t in texts(command)}
    catalogue = Catalogue.read(LOCALES_DIR)
    stale = [
        f"{locale.value}.json [{section}] {english!r}"
        for locale, section, english in catalogue.translated()
        if (section, english) not in used
    ]
    assert not stale, "entries no command uses any more:\n" + "\n".join(stale)


class _Choice:
    pass


async def test_the_translator_answers_none_where_it_has_nothing(tmp_path: Path) -> None:
    (tmp_path / "fr.json").write_text(
        '{"commands": {"voice": "voix"}, "choices": {"Voice": "Voix"}}', encoding="utf-8"
    )
    translator = CommandTranslator(tmp_path)
    await translator.load()
    name = TranslationContext(TranslationContextLocation.command_name, None)
    choice = TranslationContext(TranslationContextLocation.choice_name, _Choice())
    other = TranslationContext(TranslationContextLocation.other, None)
    voice = app_commands.locale_str("voice")
    assert await translator.translate(voice, discord.Locale.french, name) == "voix"
    # Another context of the same English word, another locale, a string without letters,
    # a member-facing string (the "other" context): English (None).
    assert await translator.translate(voice, discord.Locale.french, choice) is None
    assert await translator.translate(voice, discord.Locale.german, name) is None
    assert (
        await translator.translate(app_commands.locale_str("…"), discord.Locale.french, name)
        is None
    )
    assert await translator.translate(voice, discord.Locale.french, other) is None
    assert set(SECTIONS.values()) == {
        "commands",
        "descriptions",
        "options",
        "option_descriptions",
        "choices",
    }


@pytest.mark.parametrize(
    "text",
    ['{"command": {"voice": "voix"}}', '{"commands": {"voice": 3}}', "[]", "{"],
)
def test_a_broken_locale_file_is_refused_by_name(tmp_path: Path, text: str) -> None:
    (tmp_path / "fr.json").write_text(text, encoding="utf-8")
    with pytest.raises(CatalogueError, match=r"fr\.json"):
        Catalogue.read(tmp_path)
