"""deploy/: the production layout's files say what the code does. Its config loads for both
halves as a production layout; every command in the compose file and the Procfile is a
valid role of ``tada-engine``; the migrations run once, apart; every job family has a
worker; the bot starts no engine."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml
from cryptography.fernet import Fernet

from bot.config import load_bot_config
from engine.cli import build_parser
from engine.jobs import QUEUES
from engine.settings import load_engine_settings, read_config_file

DEPLOY = Path(__file__).parents[1] / "deploy"
SECRETS = {
    "TADA_ENGINE_SECRET_KEY": "s" * 48,
    "TADA_ENGINE_REGISTRATION_TOKEN": "t" * 24,
    "DISCORD_TOKEN": "a.b.c",
    "TADA_BOT_ENCRYPTION_KEY": Fernet.generate_key().decode(),
}


def _commands() -> list[list[str]]:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    found = [s["command"] for s in compose["services"].values() if "command" in s]
    for line in (DEPLOY / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            found.append(shlex.split(line.split(":", 1)[1]))
    return [c for c in found if c[0] in ("tada-engine", "tada-bot")]


def test_the_config_is_a_production_layout_for_both_halves() -> None:
    engine = load_engine_settings(DEPLOY / "config.toml", environ=SECRETS)
    assert engine.mode == "production"
    assert engine.jobs.backend == "redis" and engine.jobs.split_queues
    assert engine.jobs.in_process_workers == 0
    assert engine.resolved_database_url.startswith("postgresql+asyncpg://")
    assert engine.limits.storage_uri.startswith("redis://")
    bot = load_bot_config(read_config_file(DEPLOY / "config.toml"), environ=SECRETS)
    assert not bot.tada.embedded and bot.database_url.startswith("postgresql+asyncpg://")


def test_every_command_is_a_role_and_every_queue_has_a_worker() -> None:
    commands = _commands()
    served, migrations, taken = 0, 0, []
    for command in commands:
        if command[0] == "tada-bot":
            assert "--no-sandbox" in command
            continue
        args = build_parser().parse_args(command[1:])
        if args.command == "serve":
            assert args.no_consumers, command  # API processes run no jobs
            served += 1
        elif args.command == "migrate":
            migrations += 1
        elif args.command == "worker":
            assert args.queues, command
            taken += args.queues
    assert served >= 4  # two API processes in each file
    assert migrations == 2  # once, before the roles start, in each file
    assert sorted(set(taken)) == sorted(QUEUES)
