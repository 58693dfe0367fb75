"""``tada-bot`` / ``python -m bot``: start the Discord bot (and, by default, our engine).

Without a Discord token it starts the sandbox instead (:mod:`bot.sandbox`): the same bot in
a simulated Discord in the browser. ``--no-sandbox`` (or ``TADA_SANDBOX=0``) prints how to
get a token instead. In production mode (``TADA_MODE=production``) it first checks every
secret and, when some are missing, lists them all with the command that makes each, and
exits with status 2 before anything starts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import discord

from bot.config import (
    MODE_ENV,
    TOKEN_ENV,
    BotConfig,
    ConfigError,
    SecretProblem,
    load_bot_config,
    production_problems,
    read_config_file,
)
from bot.logs import configure_logging

NO_TOKEN = f"""\
tada-bot: no Discord bot token ({TOKEN_ENV} is not set).

To get one:
  1. Open https://discord.com/developers/applications and create an application.
  2. In "Bot", press "Reset Token" and copy the token.
  3. In "OAuth2 -> URL Generator", tick "bot" and "applications.commands", then the
     permissions Send Messages, Attach Files and Embed Links; open the URL to invite the
     bot to your server.
  4. Start it:  {TOKEN_ENV}=<the token> make run
     (set discord.dev_guild_id in config.toml to your server's id for instant commands)

"""
SANDBOX_ENV = "TADA_SANDBOX"
SANDBOX_PORT_ENV = "TADA_SANDBOX_PORT"
DEFAULT_SANDBOX_PORT = 8200
# Libraries whose INFO lines are details, not news (Alembic's plugin and migration lines,
# huey's consumer banner): shown only when log_level = "DEBUG".
DETAIL_LOGGERS = ("alembic", "huey")


def quiet_details(level: str) -> None:
    """Start-up shows the few lines a person needs; library details go to DEBUG."""
    if logging.getLevelName(level.upper()) == logging.DEBUG:
        return
    for name in DETAIL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _sandbox_wanted(args: argparse.Namespace, config: BotConfig) -> bool:
    # Never in production: a deployment that lost its token must stop loudly, not quietly
    # serve a sandbox on loopback while its service manager believes the bot is up.
    if args.no_sandbox or config.mode == "production":
        return False
    return os.environ.get(SANDBOX_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _no_sandbox_reason(args: argparse.Namespace, config: BotConfig) -> str:
    """Why no sandbox started, naming what the operator set."""
    if config.mode == "production":
        return (
            "Production mode needs a token: the sandbox never starts there (a deployment\n"
            "that lost its token must stop, not quietly serve a simulated Discord).\n"
        )
    sandbox = "the same bot in a simulated Discord in your browser"
    if args.no_sandbox:
        return f"Without --no-sandbox, `make run` starts the sandbox instead: {sandbox}.\n"
    return (
        f"{SANDBOX_ENV}={os.environ.get(SANDBOX_ENV, '')} is set; without it, `make run` "
        f"starts the sandbox instead:\n{sandbox}.\n"
    )


def _production_refusal(source: str, problems: list[SecretProblem]) -> str:
    """Everything a production start lacks, in one message."""
    return "\n".join(
        [
            f"tada-bot: production mode ({source}) needs these secrets in the environment:",
            *(problem.render() for problem in problems),
            "Set them (an env file: docs/deployment/server.md) and start again.",
            f"Only trying it out? Leave {MODE_ENV} unset: development mode generates local keys",
            "into the data directory and, without a token, starts the sandbox.",
        ]
    )


def _engine_settings_error(config: BotConfig, config_path: Path | None) -> str | None:
    """The embedded engine's configuration problem, found before anything starts."""
    if not config.tada.embedded:
        return None
    try:
        from engine.settings import SettingsError, load_engine_settings
    except ImportError:  # the embedded engine's start says what to install
        return None
    try:
        load_engine_settings(config_path)
    except SettingsError as exc:
        return str(exc)
    return None


def _sandbox_port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port is 0 (any free one) to 65535")
    return port


def _run_sandbox(config: BotConfig, args: argparse.Namespace) -> int:
    from bot.embedded import EngineStartError
    from bot.sandbox import SandboxChannel, SandboxError, run_sandbox

    try:
        asyncio.run(
            run_sandbox(
                config,
                config_path=args.config,
                port=args.sandbox_port,
                start_channel=SandboxChannel(args.sandbox_channel),
            )
        )
    except KeyboardInterrupt:
        return 0
    except (SandboxError, EngineStartError) as exc:
        print(f"tada-bot: {exc}", file=sys.stderr)
        return 2
    return 0


def _shard_ids(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError("shard ids are numbers separated by commas") from exc


def _with_shards(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The config file's values with ``--shard-count`` / ``--shard-ids`` on top."""
    if args.shard_count is None and args.shard_ids is None:
        return raw
    section = dict(raw.get("discord") or {})
    if args.shard_count is not None:
        section["shard_count"] = args.shard_count
    if args.shard_ids is not None:
        section["shard_ids"] = list(args.shard_ids)
    return {**raw, "discord": section}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="tada-bot", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: $TADA_CONFIG or ./config.toml)",
    )
    parser.add_argument(
        "--no-sandbox",
        action="store_true",
        help=f"without {TOKEN_ENV}, say how to get a token instead of starting the sandbox "
        f"(also {SANDBOX_ENV}=0)",
    )
    parser.add_argument(
        "--sandbox-port",
        type=_sandbox_port,
        default=os.environ.get(SANDBOX_PORT_ENV, str(DEFAULT_SANDBOX_PORT)),
        help=f"the sandbox page's loopback port; 0: any free port (default: ${SANDBOX_PORT_ENV} "
        f"or {DEFAULT_SANDBOX_PORT})",
    )
    parser.add_argument(
        "--sandbox-channel",
        choices=["general", "tadz-demo"],
        default="general",
        help="the channel the sandbox page shows first",
    )
    parser.add_argument(
        "--shard-count",
        type=int,
        default=None,
        help="the bot's total number of shards (overrides discord.shard_count)",
    )
    parser.add_argument(
        "--shard-ids",
        type=_shard_ids,
        default=None,
        help="the shards this process runs, e.g. 0,1 (overrides discord.shard_ids; default: all)",
    )
    args = parser.parse_args(argv)
    try:
        raw = read_config_file(args.config)
        raw = _with_shards(raw, args)
        source, problems = production_problems(raw)
        if problems:
            print(_production_refusal(source, problems), file=sys.stderr)
            return 2
        config = load_bot_config(raw)
    except ConfigError as exc:
        print(f"tada-bot: {exc}", file=sys.stderr)
        return 2
    engine_error = _engine_settings_error(config, args.config)
    if engine_error is not None:
        print(f"tada-bot: {engine_error}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    quiet_details(config.log_level)
    if config.discord.token is None:
        if _sandbox_wanted(args, config):
            return _run_sandbox(config, args)
        print(NO_TOKEN + _no_sandbox_reason(args, config), file=sys.stderr)
        return 2
    from bot.app import run_bot
    from bot.embedded import EngineStartError

    try:
        asyncio.run(run_bot(config, config_path=args.config))
    except KeyboardInterrupt:
        return 0
    except discord.LoginFailure:
        print(
            f"tada-bot: Discord refused the token in {TOKEN_ENV}; reset it and try again.",
            file=sys.stderr,
        )
        return 2
    except aiohttp.ClientConnectionError as exc:
        print(f"tada-bot: cannot reach Discord ({exc}); check the network.", file=sys.stderr)
        return 1
    except EngineStartError as exc:
        print(f"tada-bot: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
