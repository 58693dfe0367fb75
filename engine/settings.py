"""Engine settings: one typed, validated object built from ``config.toml`` and the environment.

Secrets come from the environment only (``TADA_ENGINE_SECRET_KEY``). Outside development
mode a missing or placeholder secret is refused at start-up.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from engine.voice.settings import (
    DEFAULT_POCKET_MODEL,
    DEFAULT_POCKET_TOKENIZER,
    DEFAULT_QWEN3_MODEL,
)

PLACEHOLDER_SECRETS = frozenset({"", "change-me", "changeme", "secret", "placeholder"})
SECRET_ENV = "TADA_ENGINE_SECRET_KEY"
MODE_ENV = "TADA_MODE"
MIN_SECRET_CHARS = 32
GENERATE_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
MiB = 1024 * 1024


class SettingsError(ValueError):
    """The configuration cannot be used; the message says what to change."""


@dataclass(frozen=True)
class SecretProblem:
    """A secret production mode needs and lacks: which variable, what is wrong, the fix."""

    env: str
    problem: str
    generate: str
    # What the second line calls ``generate``: a command to run, or where to get it.
    action: str = "generate"

    def render(self) -> str:
        """Two lines for the operator: the variable and what is wrong, then the command."""
        return f"  {self.env}: {self.problem}\n      {self.action}: {self.generate}"


def engine_secret_problem(value: str | None) -> SecretProblem | None:
    """What is wrong with ``TADA_ENGINE_SECRET_KEY`` for production (``None``: nothing)."""
    what = f"the key that signs upload and file URLs ({MIN_SECRET_CHARS}+ random characters)"
    text = (value or "").strip()
    if not text:
        problem = f"not set; {what}"
    elif text.lower() in PLACEHOLDER_SECRETS:
        problem = f"a placeholder; {what}"
    elif len(text) < MIN_SECRET_CHARS:
        problem = f"only {len(text)} characters; {what}"
    else:
        return None
    return SecretProblem(SECRET_ENV, problem, GENERATE_SECRET)


def engine_mode(raw: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """The engine's mode: ``TADA_MODE``, else ``engine.mode``, else ``general.mode``."""
    if environ.get(MODE_ENV):
        return environ[MODE_ENV]
    engine = raw.get("engine", {})
    general = raw.get("general", {})
    return str(engine.get("mode", general.get("mode", "development")))


def production_secret_problems(
    raw: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> list[SecretProblem]:
    """Every secret the engine lacks for production mode ([] outside production)."""
    env = os.environ if environ is None else environ
    if engine_mode(raw, env) != "production":
        return []
    problem = engine_secret_problem(env.get(SECRET_ENV))
    return [] if problem is None else [problem]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UploadSettings(_Section):
    """Limits for pre-signed uploads."""

    max_audio_bytes: int = Field(50 * MiB, gt=0)
    max_zip_bytes: int = Field(500 * MiB, gt=0)
    url_ttl_seconds: int = Field(7200, gt=0, le=7 * 24 * 3600)
    artifact_url_ttl_seconds: int = Field(24 * 3600, gt=0, le=30 * 24 * 3600)


S3_SECRET_ENV = "TADA_ENGINE_S3_SECRET_ACCESS_KEY"
S3_ACCESS_KEY_ENV = "TADA_ENGINE_S3_ACCESS_KEY_ID"
# SigV4 pre-signed URLs live at most this long (the S3 API's own limit).
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


class StorageSettings(_Section):
    """Where uploads and artifacts live: the data directory, or an S3-compatible bucket.

    With ``s3``, upload URLs are the bucket's own pre-signed PUT URLs and artifact URLs its
    pre-signed GET URLs; they expire after ``[engine.uploads] url_ttl_seconds`` and
    ``artifact_url_ttl_seconds``. The secret key comes from the environment only
    (``TADA_ENGINE_S3_SECRET_ACCESS_KEY``); with no keys at all, boto3's own chain is used
    (``AWS_*`` variables, an instance role).
    """

    backend: Literal["local", "s3"] = "local"
    # Unset: AWS S3 itself. SeaweedFS, MinIO, R2...: their S3 address, as clients reach it
    # (pre-signed URLs are made for this address).
    endpoint_url: str | None = None
    bucket: str | None = None
    region: str = "us-east-1"
    # Keys are stored under this prefix in the bucket ("" = at its root).
    prefix: str = Field("", pattern=r"^([A-Za-z0-9_.-]+/)*$")
    # "path" (https://host/bucket/key; SeaweedFS, MinIO) or "virtual" (bucket.host).
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None  # from the environment only

    @model_validator(mode="after")
    def _s3_needs_bucket(self) -> StorageSettings:
        if self.backend == "s3" and not self.bucket:
            raise ValueError("storage.backend = 's3' needs storage.bucket")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ValueError(
                f"storage.access_key_id and {S3_SECRET_ENV} go together: set both or neither"
            )
        return self


class LimitSettings(_Section):
    """Bounds that keep one client or member from wearing the engine down.

    Rates use the ``limits`` library's notation ("5/minute;20/hour"); an empty string turns
    a limit off. ``storage_uri`` is where the counts live: ``memory://`` in one process, or
    ``redis://host:6379`` so that several API processes share them.
    """

    # Request bodies other than uploads (JSON): refused past this before they are read.
    max_json_body_bytes: int = Field(64 * 1024, gt=0)
    # An upload (or any body) that sends nothing for this long is closed with 408.
    body_stall_seconds: float = Field(30.0, gt=0)
    storage_uri: str = "memory://"
    register_per_client: str = "5/minute;20/hour"
    register_global: str = "60/minute;600/hour"
    requests_per_client: str = "600/minute"
    # Client addresses the rates above do not apply to: the bot's own address, since every
    # member reaches the engine through it (the embedded engine adds its loopback itself).
    exempt_clients: list[str] = Field(default_factory=list)
    # Upload URLs handed out and not yet used, per member.
    max_pending_uploads: int = Field(20, ge=0)
    # Bytes of uploads a member may keep (the sum of their kept uploads).
    max_stored_bytes_per_user: int = Field(5 * 1024 * MiB, gt=0)
    # Jobs of one member queued or running at once (speech, clones, trainings, images).
    # (A community demo channel shares one key: above the bot's 8 concurrent jobs.)
    max_pending_jobs: int = Field(16, ge=0)
    # Characters of one speech request: longer work would hold a worker for minutes.
    max_speech_chars: int = Field(1000, ge=1, le=5000)


REGISTRATION_TOKEN_ENV = "TADA_ENGINE_REGISTRATION_TOKEN"


class RegistrationSettings(_Section):
    """Who may create accounts (``POST /api/users/register``)."""

    # "open": anyone who reaches the engine; "token": only with the X-Registration-Token
    # header equal to TADA_ENGINE_REGISTRATION_TOKEN; "closed": no new accounts.
    mode: Literal["open", "token", "closed"] = "open"
    token: SecretStr | None = None  # from the environment only

    @model_validator(mode="after")
    def _token_needed(self) -> RegistrationSettings:
        if self.mode == "token" and not (self.token and len(self.token.get_secret_value()) >= 16):
            raise ValueError(
                f"registration.mode = 'token' needs {REGISTRATION_TOKEN_ENV} (16+ characters)"
            )
        return self


class JobSettings(_Section):
    """The job queue (huey) and its consumer."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str | None = None
    in_process_workers: int = Field(1, ge=0, le=32)
    # One queue per job family (voice, image) instead of one for all, so that a worker can
    # take only some (`tada-engine worker --queues image` on a GPU machine). Every API and
    # worker process of one deployment must agree on it.
    split_queues: bool = False
    max_attempts: int = Field(3, ge=1, le=20)
    wait_timeout_seconds: float = Field(600.0, gt=0)
    # A worker writes a heartbeat on the jobs it runs this often. On Redis (any number of
    # workers) a job whose heartbeat is older than stale_after_seconds lost its worker and
    # is taken back by another; on SQLite (one consumer process) a restart takes back all.
    heartbeat_seconds: float = Field(10.0, gt=0, le=600)
    stale_after_seconds: float = Field(60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _redis_needs_url(self) -> JobSettings:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("jobs.backend = 'redis' needs jobs.redis_url")
        if self.stale_after_seconds < 3 * self.heartbeat_seconds:
            raise ValueError(
                "jobs.stale_after_seconds must be at least 3 x jobs.heartbeat_seconds, "
                "or a slow heartbeat would hand a live worker's job to another"
            )
        return self


OPERATOR_TOKEN_ENV = "TADA_ENGINE_OPERATOR_TOKEN"


class TraceSettings(_Section):
    """Tracing speech back to its generation (engine extension ``POST /api/trace/speech``).

    A member traces among their own generations with their API key; the operator traces
    among every generation with ``X-Operator-Token: <TADA_ENGINE_OPERATOR_TOKEN>`` (from
    the environment only; unset: nobody can). The bot's embedded engine gets one from
    the bot, for ``/tada-admin trace``.
    """

    operator_token: SecretStr | None = None  # from the environment only

    @model_validator(mode="after")
    def _token_long_enough(self) -> TraceSettings:
        if self.operator_token is not None and len(self.operator_token.get_secret_value()) < 16:
            raise ValueError(f"{OPERATOR_TOKEN_ENV} must be at least 16 characters")
        return self


METRICS_TOKEN_ENV = "TADA_ENGINE_METRICS_TOKEN"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class MetricsSettings(_Section):
    """Prometheus metrics (engine/metrics.py): who may read them, and where workers serve them.

    The API serves ``GET /metrics`` only to ``Authorization: Bearer <token>``, the token
    coming from ``TADA_ENGINE_METRICS_TOKEN`` only; without a token ``/metrics`` is 404.
    A ``tada-engine worker`` process serves its own metrics on ``worker_host:worker_port``
    (``--metrics-port`` overrides the port: one per worker process on a machine), with the
    same token rule when a token is set; unset port: no endpoint.
    """

    token: SecretStr | None = None  # from the environment only
    worker_host: str = "127.0.0.1"
    worker_port: int | None = Field(None, ge=0, le=65535)

    @model_validator(mode="after")
    def _token_long_enough(self) -> MetricsSettings:
        if self.token is not None and len(self.token.get_secret_value()) < 16:
            raise ValueError(f"{METRICS_TOKEN_ENV} must be at least 16 characters")
        if (
            self.worker_port is not None
            and self.worker_host not in LOOPBACK_HOSTS
            and self.token is None
        ):
            raise ValueError(
                f"metrics.worker_host = {self.worker_host!r} serves workers' metrics beyond "
                f"this machine: set {METRICS_TOKEN_ENV} (16+ characters) so that only "
                'Prometheus reads them, or keep worker_host = "127.0.0.1"'
            )
        return self


# Pulled-model keys whose default is a hub id: their pulled folder is used when there.
_DEFAULT_PULLED = {
    "pocket_model": DEFAULT_POCKET_MODEL,
    "pocket_tokenizer": DEFAULT_POCKET_TOKENIZER,
    "qwen3_model": DEFAULT_QWEN3_MODEL,
}


class EngineSettings(_Section):
    """Everything the engine needs; build it with :func:`load_engine_settings` or directly."""

    mode: Literal["development", "production"] = "development"
    data_dir: Path = Path("data")
    database_url: str | None = None
    secret_key: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(8100, ge=0, le=65535)
    # Where clients reach the engine: the base of every signed URL. Unset, the address the
    # server listens on (loopback by default); never the request's Host header.
    public_url: str | None = None
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn's
    # forwarded_allow_ips); empty: none, the socket's peer is the client.
    trusted_proxies: list[str] = Field(default_factory=list)
    # uvicorn's access log (one line per request, signatures and emails redacted): about
    # 5% of a metadata read's CPU under load; off where a proxy in front logs requests.
    access_log: bool = True
    # tada-bot's embedded engine runs as a child process (`tada-engine serve` on loopback):
    # its API and models never hold the bot's event loop. false: inside the bot's loop.
    embedded_child_process: bool = True
    limits: LimitSettings = LimitSettings()
    registration: RegistrationSettings = RegistrationSettings()
    uploads: UploadSettings = UploadSettings()
    jobs: JobSettings = JobSettings()
    storage: StorageSettings = StorageSettings()
    metrics: MetricsSettings = MetricsSettings()
    trace: TraceSettings = TraceSettings()
    # Back-end sections owned by the voice and image packages; validated there.
    voice: dict[str, Any] = Field(default_factory=dict)
    image: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _pulled_models(cls, data: Any) -> Any:
        """``[engine.image] base_model`` (and ``single_file_config``) or ``[engine.voice]
        neural_model = "org/name"`` (and ``pocket_model``, ``pocket_tokenizer``,
        ``qwen3_model``, named or not): the folder ``models pull`` made."""
        if not isinstance(data, dict):
            return data
        for section, keys in (
            ("image", ("base_model", "single_file_config")),
            ("voice", ("neural_model", "pocket_model", "pocket_tokenizer", "qwen3_model")),
        ):
            values = data.get(section)
            if not isinstance(values, dict):
                continue
            for key in keys:
                # The pocket back end's folders are named by default: resolved all the same.
                named = values.get(key, _DEFAULT_PULLED.get(key))
                if isinstance(named, str) and not Path(named).exists():
                    from engine.model_store import resolve_pulled

                    pulled = resolve_pulled(Path(data.get("data_dir", "data")), named)
                    if pulled is not None:
                        values = {**values, key: str(pulled)}
            data = {**data, section: values}
        return data

    @model_validator(mode="after")
    def _presign_ttls(self) -> EngineSettings:
        if self.storage.backend == "s3":
            longest = max(self.uploads.url_ttl_seconds, self.uploads.artifact_url_ttl_seconds)
            if longest > MAX_PRESIGN_SECONDS:
                raise ValueError(
                    "with storage.backend = 's3', uploads.url_ttl_seconds and "
                    "uploads.artifact_url_ttl_seconds must be at most 7 days (604800): "
                    "S3 pre-signed URLs live no longer"
                )
        return self

    @model_validator(mode="after")
    def _secret_allowed(self) -> EngineSettings:
        if self.mode == "production":
            value = self.secret_key.get_secret_value() if self.secret_key else ""
            problem = engine_secret_problem(value)
            if problem is not None:
                raise ValueError(
                    f"production mode needs {SECRET_ENV}: {problem.problem}; "
                    f"generate one with {GENERATE_SECRET}"
                )
        return self

    @property
    def resolved_database_url(self) -> str:
        """The async SQLAlchemy URL; a SQLite file in the data directory by default."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'engine.sqlite3').resolve()}"

    def signing_key(self) -> bytes:
        """The HMAC key for signed URLs; generated once into the data directory in development."""
        if self.secret_key is not None and self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value().encode()
        if self.mode == "production":  # pragma: no cover - refused by the validator
            raise SettingsError(f"{SECRET_ENV} is not set")
        return _dev_secret_file(self.data_dir / "engine-secret.key")


def _dev_secret_file(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


def read_config_file(path: Path | None) -> dict[str, Any]:
    """Read the TOML config; ``TADA_CONFIG`` or ``./config.toml`` when no path is given."""
    if path is None:
        env = os.environ.get("TADA_CONFIG")
        path = Path(env) if env else Path("config.toml")
        if not path.exists():
            return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise SettingsError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}") from exc


def load_engine_settings(
    path: Path | None = None, environ: dict[str, str] | None = None
) -> EngineSettings:
    """Build settings from ``[general]`` and ``[engine]`` of the config file and the env."""
    env = os.environ if environ is None else environ
    raw = read_config_file(path)
    general = raw.get("general", {})
    data: dict[str, Any] = dict(raw.get("engine", {}))
    for key in ("mode", "data_dir"):
        if key in general and key not in data:
            data[key] = general[key]
    if "secret_key" in data:
        raise SettingsError(f"engine.secret_key must not be in the config file; set {SECRET_ENV}")
    if env.get(SECRET_ENV):
        data["secret_key"] = env[SECRET_ENV]
    if env.get(MODE_ENV):
        data["mode"] = env[MODE_ENV]
    if env.get(REGISTRATION_TOKEN_ENV):
        registration = dict(data.get("registration", {}))
        registration["token"] = env[REGISTRATION_TOKEN_ENV]
        data["registration"] = registration
    metrics = data.get("metrics")
    if isinstance(metrics, dict) and "token" in metrics:
        raise SettingsError(
            f"engine.metrics.token must not be in the config file; set {METRICS_TOKEN_ENV}"
        )
    if env.get(METRICS_TOKEN_ENV):
        data["metrics"] = {
            **(metrics if isinstance(metrics, dict) else {}),
            "token": env[METRICS_TOKEN_ENV],
        }
    trace = data.get("trace")
    if isinstance(trace, dict) and "operator_token" in trace:
        raise SettingsError(
            f"engine.trace.operator_token must not be in the config file; set {OPERATOR_TOKEN_ENV}"
        )
    if env.get(OPERATOR_TOKEN_ENV):
        data["trace"] = {
            **(trace if isinstance(trace, dict) else {}),
            "operator_token": env[OPERATOR_TOKEN_ENV],
        }
    storage = data.get("storage")
    if isinstance(storage, dict) and "secret_access_key" in storage:
        raise SettingsError(
            f"engine.storage.secret_access_key must not be in the config file; set {S3_SECRET_ENV}"
        )
    if env.get(S3_SECRET_ENV) or env.get(S3_ACCESS_KEY_ENV):
        storage = dict(storage or {})
        if env.get(S3_SECRET_ENV):
            storage["secret_access_key"] = env[S3_SECRET_ENV]
        if env.get(S3_ACCESS_KEY_ENV):
            storage["access_key_id"] = env[S3_ACCESS_KEY_ENV]
        data["storage"] = storage
    if env.get("TADA_DATA_DIR"):
        data["data_dir"] = env["TADA_DATA_DIR"]
    if env.get("TADA_ENGINE_DATABASE_URL"):
        data["database_url"] = env["TADA_ENGINE_DATABASE_URL"]
    try:
        return EngineSettings.model_validate(data)
    except ValueError as exc:
        raise SettingsError(f"invalid engine settings: {exc}") from exc


SETTINGS_ENV = "TADA_ENGINE_SETTINGS_JSON"


def settings_for_child(settings: EngineSettings) -> str:
    """The settings as JSON for a child process's environment (secrets included: the
    environment of a child is as private as this process's memory)."""
    data = settings.model_dump(mode="json")
    if settings.secret_key is not None:
        data["secret_key"] = settings.secret_key.get_secret_value()
    token = settings.registration.token
    data["registration"]["token"] = token.get_secret_value() if token else None
    s3_secret = settings.storage.secret_access_key
    data["storage"]["secret_access_key"] = s3_secret.get_secret_value() if s3_secret else None
    metrics_token = settings.metrics.token
    data["metrics"]["token"] = metrics_token.get_secret_value() if metrics_token else None
    operator = settings.trace.operator_token
    data["trace"]["operator_token"] = operator.get_secret_value() if operator else None
    return json.dumps(data)


def settings_from_parent(environ: Mapping[str, str]) -> EngineSettings | None:
    """The settings a parent passed in :data:`SETTINGS_ENV`, if any."""
    raw = environ.get(SETTINGS_ENV)
    return EngineSettings.model_validate_json(raw) if raw else None
