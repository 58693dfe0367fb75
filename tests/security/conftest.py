"""Security fixtures: the bot's real composition root (as in ``tests/bot``) over the engine."""

from __future__ import annotations

from tests.bot.conftest import bot_config, services, simcord_bot

__all__ = ["bot_config", "services", "simcord_bot"]
