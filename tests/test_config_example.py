"""config.example.toml says what the defaults are: every value in it is the default, so a
copy changes nothing until an operator edits it, and its comments can be trusted."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bot.config import BotConfig, load_bot_config
from engine.image.settings import ImageSettings
from engine.settings import EngineSettings, load_engine_settings
from engine.voice.settings import VoiceSettings

EXAMPLE = Path(__file__).parents[1] / "config.example.toml"


def _differences(prefix: str, values: dict[str, Any], model: BaseModel) -> list[str]:
    found = []
    for key, value in values.items():
        default = getattr(model, key)
        if isinstance(value, dict):
            if isinstance(default, BaseModel):
                found += _differences(f"{prefix}.{key}", value, default)
            continue
        shown = getattr(default, "value", default)  # enums
        if shown != value and str(shown) != str(value):
            found.append(f"{prefix}.{key} = {value!r}, but the default is {shown!r}")
    return found


def test_every_value_in_the_example_is_the_default() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    engine = dict(raw["engine"])
    voice, image = engine.pop("voice"), engine.pop("image")
    bot = BotConfig()
    problems = [
        *_differences("general", raw["general"], bot),
        *_differences("engine", engine, EngineSettings()),
        *_differences("engine.voice", voice, VoiceSettings()),
        *_differences("engine.image", image, ImageSettings()),
        *(
            difference
            for name in ("discord", "tada", "jobs", "metrics", "safety")
            for difference in _differences(name, raw[name], getattr(bot, name))
        ),
    ]
    assert problems == []


def test_the_example_loads_for_both_halves() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    assert load_bot_config(raw, environ={}) == BotConfig()
    settings = load_engine_settings(EXAMPLE, environ={})
    assert VoiceSettings.model_validate(settings.voice).preload is True
