"""Bot fixtures: the real composition root over the real engine, in-process, in SimCord."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from bot.app import BotServices, TadaBot, create_bot, open_services
from bot.config import BotConfig

ENGINE_URL = "http://testserver"


def make_bot_config(data_dir: Path, **overrides: object) -> BotConfig:
    """Bot config for tests: development mode (key file generated), data in ``data_dir``."""
    values: dict[str, object] = {"data_dir": data_dir}
    values.update(overrides)
    return BotConfig.model_validate(values)


@pytest.fixture
def bot_config(tmp_path: Path) -> BotConfig:
    return make_bot_config(tmp_path / "bot")


@pytest.fixture
async def services(
    bot_config: BotConfig, engine: tuple[FastAPI, httpx.AsyncClient]
) -> AsyncIterator[BotServices]:
    """Services built by the composition root, talking to the engine through ASGITransport."""
    _, api = engine
    async with open_services(bot_config, http=api, base_url=ENGINE_URL) as built:
        yield built


@pytest.fixture
def simcord_bot(services: BotServices) -> TadaBot:
    return create_bot(services)
