"""The bot's configuration: ``[general]``, ``[discord]``, ``[tada]`` and ``[store]`` of
``config.toml`` (the same file the engine reads), secrets from the environment.

Environment variables (secrets never live in the file):

- ``DISCORD_TOKEN``: the bot token.
- ``TADA_BOT_ENCRYPTION_KEY``: Fernet key(s) encrypting members' API keys, comma-separated;
  the first encrypts, all decrypt (rotation). In development a key is generated once into
  ``<data_dir>/bot-encryption.key`` (mode 0600) when this is unset.
- ``TADA_BOT_DATABASE_URL``: overrides ``store.database_url``.
- ``TADA_API_URL``: overrides ``tada.base_url``.
- ``TADA_BOT_METRICS_PORT``: overrides ``metrics.port`` (the bot's Prometheus endpoint).
- ``TADA_MODE``, ``TADA_DATA_DIR``: override ``general.mode`` and ``general.data_dir``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from bot.tada.client import RetryPolicy

# One shape for every missing secret, the bot's and the embedded engine's (engine.settings
# needs only pydantic, like this module).
from engine.settings import SecretProblem

TOKEN_ENV = "DISCORD_TOKEN"
ENCRYPTION_KEY_ENV = "TADA_BOT_ENCRYPTION_KEY"
# The engine operator's token (same variable as the engine's): /tada-admin trace.
OPERATOR_TOKEN_ENV = "TADA_ENGINE_OPERATOR_TOKEN"
MODE_ENV = "TADA_MODE"
EMBEDDED = "embedded"
GENERATE_FERNET_KEY = (
    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)
GET_TOKEN = "https://discord.com/developers/applications -> your application -> Bot -> Reset Token"


class ConfigError(ValueError):
    """The configuration cannot be used; the message says what to change."""


def _bot_mode(raw: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[str, str]:
    """The bot's mode and where it was set (for messages)."""
    if environ.get(MODE_ENV):
        return environ[MODE_ENV], f"{MODE_ENV}={environ[MODE_ENV]}"
    mode = str(raw.get("general", {}).get("mode", "development"))
    return mode, f'general.mode = "{mode}" in the config file'


def _fernet_problem(value: str) -> str | None:
    from cryptography.fernet import Fernet

    what = "the Fernet key(s) that encrypt members' API keys in the bot's store"
    keys = [part.strip() for part in value.split(",") if part.strip()]
    if not keys:
        return f"not set; {what}"
    for index, key in enumerate(keys, start=1):
        try:
            Fernet(key.encode())
        except ValueError:
            which = f"key {index} of {len(keys)}" if len(keys) > 1 else "it"
            return f"{which} is not a Fernet key (32 url-safe base64 bytes); {what}"
    return None


def production_problems(
    raw: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> tuple[str, list[SecretProblem]]:
    """Every secret a production start lacks, the engine's too when it is embedded.

    Returns where production mode was set (e.g. ``TADA_MODE=production``) and the problems,
    all at once ([] outside production), so one start tells the operator everything.
    """
    env = os.environ if environ is None else environ
    mode, source = _bot_mode(raw, env)
    if mode != "production":
        return source, []
    problems: list[SecretProblem] = []
    if not env.get(TOKEN_ENV, "").strip():
        problems.append(
            SecretProblem(
                TOKEN_ENV, "not set; the bot's token from Discord", GET_TOKEN, action="get it"
            )
        )
    fernet = _fernet_problem(env.get(ENCRYPTION_KEY_ENV, ""))
    if fernet is not None:
        problems.append(SecretProblem(ENCRYPTION_KEY_ENV, fernet, GENERATE_FERNET_KEY))
    base_url = env.get("TADA_API_URL") or raw.get("tada", {}).get("base_url", EMBEDDED)
    if str(base_url).strip() == EMBEDDED:
        try:
            from engine.settings import production_secret_problems
        except ImportError:  # the embedded engine's start says what to install
            pass
        else:
            problems.extend(
                SecretProblem(p.env, p.problem, p.generate)
                for p in production_secret_problems(raw, env)
            )
    return source, problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DiscordConfig(_Section):
    """``[discord]``: the connection to Discord."""

    token: SecretStr | None = None
    # Commands sync to this guild instantly (development); globally when unset.
    dev_guild_id: int | None = None
    sync_commands: bool = True
    # Sharding (discord.py's AutoShardedBot): the total number of shards, and which of
    # them this process runs (all when unset). Several processes split the shards among
    # them and share one store (``[store] database_url``, PostgreSQL).
    shard_count: int = Field(1, ge=1, le=4096)
    shard_ids: tuple[int, ...] | None = None
    # Members may add the app to their own account and use it in DMs and in servers where
    # the bot is not (bot/installs.py); off: a server install only, as before.
    user_installs: bool = False

    @model_validator(mode="after")
    def _shards_in_range(self) -> DiscordConfig:
        ids = self.shard_ids
        if ids is not None:
            if not ids:
                raise ValueError("discord.shard_ids must name at least one shard")
            if len(set(ids)) != len(ids) or not all(0 <= i < self.shard_count for i in ids):
                raise ValueError(
                    f"discord.shard_ids must be distinct shards from 0 to "
                    f"{self.shard_count - 1} (discord.shard_count is {self.shard_count})"
                )
        return self


class TadaConfig(_Section):
    """``[tada]``: which Ta-da API the bot talks to, and how patiently."""

    base_url: str = EMBEDDED
    timeout_seconds: float = Field(30.0, gt=0)
    connect_timeout_seconds: float = Field(10.0, gt=0)
    transfer_timeout_seconds: float = Field(600.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    backoff_base_seconds: float = Field(0.5, ge=0)
    backoff_max_seconds: float = Field(30.0, ge=0)
    max_retry_after_seconds: float = Field(60.0, ge=0)
    # How long the API's OpenAPI document (which optional generation controls it offers)
    # is trusted before it is fetched again.
    offer_ttl_seconds: float = Field(600.0, gt=0)
    # The engine operator's token, for ``/tada-admin trace`` (from the environment only,
    # TADA_ENGINE_OPERATOR_TOKEN; the embedded engine gets one from the bot by itself).
    operator_token: SecretStr | None = None

    @field_validator("base_url")
    @classmethod
    def _url_or_embedded(cls, value: str) -> str:
        value = value.strip()
        if value != EMBEDDED and not value.startswith(("http://", "https://")):
            raise ValueError(f"tada.base_url must be {EMBEDDED!r} or an http(s) URL")
        return value.rstrip("/")

    @property
    def embedded(self) -> bool:
        """Whether the bot starts our engine beside itself."""
        return self.base_url == EMBEDDED

    def retry_policy(self) -> RetryPolicy:
        """The client's retry policy from these settings."""
        return RetryPolicy(
            max_retries=self.max_retries,
            backoff_base_seconds=self.backoff_base_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
            max_retry_after_seconds=self.max_retry_after_seconds,
        )


class StoreConfig(_Section):
    """``[store]``: the bot's own database and the key that encrypts members' API keys."""

    database_url: str | None = None
    encryption_keys: tuple[SecretStr, ...] = ()


class JobsConfig(_Section):
    """``[jobs]``: how the bot runs members' requests and posts their results."""

    # Ta-da calls in flight at once, across all members; one member gets at most
    # ``per_member`` of them, so nobody's burst starves the others.
    max_concurrent: int = Field(8, ge=1, le=256)
    per_member: int = Field(2, ge=1, le=64)
    # How often a training is polled (a finished training is posted within this), and
    # how often at most its progress message is edited (Discord rate-limits edits).
    poll_seconds: float = Field(0.5, gt=0)
    progress_edit_seconds: float = Field(5.0, ge=0)
    # Attempts per destination when Discord fails to take a result, and the first pause.
    post_attempts: int = Field(4, ge=1, le=20)
    post_backoff_seconds: float = Field(1.0, ge=0)
    # A generation whose answer was lost (timeout, dropped connection) may still be made
    # by Ta-da: its listing is searched for this long, every ``poll_seconds``, before the
    # member is told it failed.
    lost_lookup_seconds: float = Field(30.0, ge=0, le=600)
    # Several bot processes share the jobs: a process claims a job in the store before it
    # works on it, renews its claim every ``sweep_seconds`` and holds it ``lease_seconds``;
    # a process that dies loses its claims after that, and another takes them over. The
    # sweep also picks up jobs another process queued. ``runner_id`` names this process's
    # claims (by default the host and its shards): a process restarted under the same
    # name takes its own claims back at once. Two live processes need different names.
    runner_id: str | None = Field(None, min_length=1, max_length=64)
    lease_seconds: float = Field(30.0, ge=1, le=86400)
    sweep_seconds: float = Field(5.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _lease_outlives_sweep(self) -> JobsConfig:
        if self.lease_seconds <= self.sweep_seconds:
            raise ValueError("jobs.lease_seconds must be longer than jobs.sweep_seconds")
        return self


METRICS_PORT_ENV = "TADA_BOT_METRICS_PORT"


class MetricsConfig(_Section):
    """``[metrics]``: the bot's Prometheus endpoint (bot/metrics.py).

    Off unless ``port`` is set (env: ``TADA_BOT_METRICS_PORT``, e.g. one port per shard
    process); it listens on ``host``, loopback by default, so only this machine (a local
    Prometheus, an SSH tunnel) reads it.
    """

    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=0, le=65535)


class SafetyConfig(_Section):
    """``[safety]``: the classifier every generated image goes through before it is posted.

    ``auto``: NudeNet when its package is installed (the ``nsfw-filter`` extra, AGPL-3.0),
    else none, said loudly at start and in ``/tada-admin show``. ``nudenet``: required
    (the bot does not start without it). ``none``: images are posted unclassified.
    """

    classifier: Literal["auto", "nudenet", "none"] = "auto"
    # The score (0 to 1) from which an image counts as explicit.
    threshold: float = Field(0.5, ge=0.0, le=1.0)


class BotConfig(_Section):
    """Everything the bot needs; build it with :func:`load_bot_config` or directly."""

    mode: Literal["development", "production"] = "development"
    data_dir: Path = Path("data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    discord: DiscordConfig = DiscordConfig()
    tada: TadaConfig = TadaConfig()
    store: StoreConfig = StoreConfig()
    jobs: JobsConfig = JobsConfig()
    metrics: MetricsConfig = MetricsConfig()
    safety: SafetyConfig = SafetyConfig()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _production_needs_key(self) -> BotConfig:
        if self.mode == "production" and not self.store.encryption_keys:
            raise ValueError(
                f"production mode needs {ENCRYPTION_KEY_ENV}: generate one with "
                f"{GENERATE_FERNET_KEY}"
            )
        return self

    @property
    def database_url(self) -> str:
        """The async SQLAlchemy URL; a SQLite file in the data directory by default."""
        if self.store.database_url:
            return self.store.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'bot.sqlite3').resolve()}"

    @property
    def key_file(self) -> Path:
        """Where development mode keeps its generated encryption key."""
        return self.data_dir / "bot-encryption.key"


def load_bot_config(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> BotConfig:
    """Build the bot config from a parsed config file and the environment."""
    env = os.environ if environ is None else environ
    general = dict(raw.get("general", {}))
    sections = {
        name: dict(raw.get(name, {}))
        for name in ("discord", "tada", "store", "jobs", "metrics", "safety")
    }
    if "token" in sections["discord"]:
        raise ConfigError(f"discord.token must not be in the config file; set {TOKEN_ENV}")
    for key in ("encryption_key", "encryption_keys"):
        if key in sections["store"]:
            raise ConfigError(
                f"store.{key} must not be in the config file; set {ENCRYPTION_KEY_ENV}"
            )
    data: dict[str, Any] = {
        key: general[key] for key in ("mode", "data_dir", "log_level") if key in general
    }
    if env.get(MODE_ENV):
        data["mode"] = env[MODE_ENV]
    if env.get("TADA_DATA_DIR"):
        data["data_dir"] = env["TADA_DATA_DIR"]
    if env.get(TOKEN_ENV, "").strip():
        sections["discord"]["token"] = env[TOKEN_ENV].strip()
    if env.get(ENCRYPTION_KEY_ENV, "").strip():
        sections["store"]["encryption_keys"] = tuple(
            part.strip() for part in env[ENCRYPTION_KEY_ENV].split(",") if part.strip()
        )
    if env.get("TADA_BOT_DATABASE_URL"):
        sections["store"]["database_url"] = env["TADA_BOT_DATABASE_URL"]
    if env.get("TADA_API_URL"):
        sections["tada"]["base_url"] = env["TADA_API_URL"]
    if "operator_token" in sections["tada"]:
        raise ConfigError(
            f"tada.operator_token must not be in the config file; set {OPERATOR_TOKEN_ENV}"
        )
    if env.get(OPERATOR_TOKEN_ENV, "").strip():
        sections["tada"]["operator_token"] = env[OPERATOR_TOKEN_ENV].strip()
    if env.get(METRICS_PORT_ENV, "").strip():
        sections["metrics"]["port"] = env[METRICS_PORT_ENV].strip()
    data.update(sections)
    try:
        return BotConfig.model_validate(data)
    except ValueError as exc:
        raise ConfigError(f"invalid bot settings: {exc}") from exc


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    """Read the TOML config: ``path``, else ``$TADA_CONFIG``, else ``./config.toml`` if any."""
    import tomllib

    if path is None:
        env = os.environ.get("TADA_CONFIG")
        path = Path(env) if env else Path("config.toml")
        if not env and not path.exists():
            return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
