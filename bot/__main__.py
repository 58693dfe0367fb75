"""``tada-bot`` / ``python -m bot``: start the Discord bot (and, by default, our engine)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import aiohttp
import discord

from bot.config import TOKEN_ENV, ConfigError, load_bot_config, read_config_file
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


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="tada-bot", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: $TADA_CONFIG or ./config.toml)",
    )
    args = parser.parse_args(argv)
    try:
        raw = read_config_file(args.config)
        config = load_bot_config(raw)
    except ConfigError as exc:
        print(f"tada-bot: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    if config.discord.token is None:
        print(NO_TOKEN, file=sys.stderr)
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
