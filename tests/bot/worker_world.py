"""Fixtures for SimCord tests whose jobs really run: an engine with one in-process worker
and a bot that polls and posts quickly. Import them into a test module to use them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import BotConfig
from engine.settings import EngineSettings, JobSettings
from tests.bot.conftest import make_bot_config
from tests.conftest import make_settings
from tests.waiting import CEILING_S


@pytest.fixture
def engine_settings(tmp_path: Path) -> EngineSettings:
    return make_settings(
        tmp_path / "engine", jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S)
    )


@pytest.fixture
def bot_config(tmp_path: Path) -> BotConfig:
    return make_bot_config(
        tmp_path / "bot", jobs={"poll_seconds": 0.05, "post_backoff_seconds": 0.01}
    )
