"""Bot configuration: the shared config file, secrets from the environment only."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from bot.config import ConfigError, load_bot_config, read_config_file
from bot.logs import RedactKeys, redact

EXAMPLE = Path(__file__).parents[2] / "config.example.toml"


def test_defaults_are_embedded_development_with_a_sqlite_store() -> None:
    config = load_bot_config({}, environ={})
    assert config.tada.embedded and config.mode == "development"
    assert config.discord.token is None
    assert config.database_url.startswith("sqlite+aiosqlite:///")
    assert config.database_url.endswith("data/bot.sqlite3")


def test_the_example_config_file_is_valid_for_the_bot() -> None:
    config = load_bot_config(read_config_file(EXAMPLE), environ={})
    assert config.tada.embedded
    assert config.tada.max_retries >= 0


def test_sections_and_environment_overrides(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    raw = {
        "general": {"data_dir": str(tmp_path), "mode": "development"},
        "discord": {"dev_guild_id": 123},
        "tada": {"base_url": "https://api.ta-da.io/tadzagent/", "max_retries": 5},
        "store": {"database_url": "sqlite+aiosqlite:///x.db"},
    }
    env = {
        "DISCORD_TOKEN": " MTIz.bot-token-value ",
        "TADA_BOT_ENCRYPTION_KEY": f"{key}, {Fernet.generate_key().decode()}",
        "TADA_BOT_DATABASE_URL": "postgresql+asyncpg://u:p@h/db",
    }
    config = load_bot_config(raw, environ=env)
    assert (
        config.discord.token is not None
        and config.discord.token.get_secret_value() == "MTIz.bot-token-value"
    )
    assert config.discord.dev_guild_id == 123
    assert config.tada.base_url == "https://api.ta-da.io/tadzagent" and not config.tada.embedded
    assert config.tada.retry_policy().max_retries == 5
    assert len(config.store.encryption_keys) == 2
    assert config.database_url == "postgresql+asyncpg://u:p@h/db"
    assert "bot-token-value" not in repr(config) and key not in repr(config)
    overridden = load_bot_config(raw, environ={"TADA_API_URL": "http://127.0.0.1:8100"})
    assert overridden.tada.base_url == "http://127.0.0.1:8100"


@pytest.mark.parametrize(
    ("raw", "env", "message"),
    [
        ({"discord": {"token": "x"}}, {}, "DISCORD_TOKEN"),
        ({"store": {"encryption_key": "x"}}, {}, "TADA_BOT_ENCRYPTION_KEY"),
        ({"general": {"mode": "production"}}, {}, "TADA_BOT_ENCRYPTION_KEY"),
        ({"tada": {"base_url": "ftp://x"}}, {}, "base_url"),
        ({"tada": {"retries": 3}}, {}, "retries"),
        ({"general": {"log_level": "LOUD"}}, {}, "log_level"),
    ],
)
def test_bad_configurations_are_refused_with_a_reason(
    raw: dict[str, dict[str, str]], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_bot_config(raw, environ=env)
    assert message in str(caught.value)


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        read_config_file(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[tada\n")
    with pytest.raises(ConfigError):
        read_config_file(broken)


def test_log_records_never_carry_a_key() -> None:
    record = logging.LogRecord(
        "discord.gateway",
        logging.DEBUG,
        __file__,
        1,
        "event: %s",
        ({"value": "tada_Abc123-secretKEY"},),
        None,
    )
    assert RedactKeys().filter(record)
    assert "secret" not in record.getMessage()
    assert "tada_…tKEY" in record.getMessage()
    assert redact("no keys here") == "no keys here"
