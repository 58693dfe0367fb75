"""``tada-engine``: serve the API, run a job worker, or apply migrations.

The roles of a production layout (docs/deployment/production.md): ``serve --no-consumers`` is an API
process only (any number, behind one address); ``worker --queues image`` takes only the
image jobs (a GPU machine) and ``worker --queues voice`` only the voice jobs, once
``[engine.jobs] split_queues = true``. Plain ``serve`` is the one-machine default: the API
and its job consumers in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from engine.logs import quiet_url_loggers, scrub_root_handlers
from engine.settings import (
    EngineSettings,
    SecretProblem,
    SettingsError,
    load_engine_settings,
    production_secret_problems,
    read_config_file,
    settings_from_parent,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from engine.metrics import MetricsServer

log = logging.getLogger("engine")
KEEP_ALIVE_SECONDS = 75
# Set by the bot for its embedded engine: the child stops when that process is gone.
PARENT_PID_ENV = "TADA_ENGINE_PARENT_PID"
DETAIL_LOGGERS = ("alembic", "huey")


def _uvicorn_options(settings: EngineSettings, host: str | None, port: int | None) -> dict:
    return {
        "host": host or settings.host,
        "port": port if port is not None else settings.port,
        "log_level": "info",
        "access_log": settings.access_log,
        # Longer than clients keep idle connections (httpx: 5 s), so the client closes an
        # idle connection first. With both at 5 s, a request sent just as the server timed
        # the connection out was lost (ReadError; 11 of 10,000 GETs at 500 clients).
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        # X-Forwarded-For/-Proto only from the proxies the operator named; by default
        # (uvicorn trusts 127.0.0.1) any local process could choose its client address.
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": ",".join(settings.trusted_proxies) or None,
    }


def api_process_app() -> object:
    """The app of one of ``serve --workers N``'s API processes: no job consumer of its own
    (the serving parent runs the consumers once, for all of them)."""
    from engine.app import create_app

    return create_app(without_consumers(load_engine_settings()))


def without_consumers(settings: EngineSettings) -> EngineSettings:
    """The settings of an API process that runs no job of its own."""
    jobs = settings.jobs.model_copy(update={"in_process_workers": 0})
    return settings.model_copy(update={"jobs": jobs})


def _serve(
    settings: EngineSettings,
    host: str | None,
    port: int | None,
    workers: int = 1,
    *,
    consumers: bool = True,
) -> int:
    import uvicorn

    from engine.app import create_app

    if not consumers:
        settings = without_consumers(settings)
    options = _uvicorn_options(settings, host, port)
    parent = os.environ.get(PARENT_PID_ENV)
    if parent:
        # The bot's embedded engine: as quiet as it is inside the bot (its start-up lines
        # are the bot's), and it stops (cleanly, as on Ctrl+C) when the bot is gone.
        options.update(log_level="warning", access_log=False)
        logging.getLogger("engine.jobs.queue").setLevel(logging.WARNING)
        threading.Thread(target=_interrupt_when_orphaned, args=(int(parent),), daemon=True).start()
    if workers <= 1:
        uvicorn.run(create_app(settings), **options)
        return 0
    # N API processes share the socket; the job consumers run here, once: started per
    # process they would multiply the model memory and the GPU work by N.
    from engine.services import build_services

    services = build_services(settings)
    services.db.migrate()
    threads = settings.jobs.in_process_workers
    metrics_server = None
    if threads > 0:
        # The API processes' /metrics show requests; the jobs run here, and show here.
        metrics_server = start_metrics_endpoint(
            settings, services.metrics.registry, settings.metrics.worker_port
        )
        services.worker.recover()
        services.queue.start_consumer(threads)
        services.start_warm_up()
    log.info(
        "serving with %d API processes; %d job consumer thread(s) in this process",
        workers,
        threads,
    )
    try:
        uvicorn.run("engine.cli:api_process_app", factory=True, workers=workers, **options)
    finally:
        if metrics_server is not None:
            metrics_server.close()
        services.queue.stop_consumer()
        asyncio.run(services.close())
    return 0


def parse_queues(value: str) -> list[str]:
    """``--queues voice,image``: the names, in order, without blanks or repeats."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one queue, e.g. --queues image")
    return list(dict.fromkeys(names))


def start_metrics_endpoint(
    settings: EngineSettings, registry: CollectorRegistry, port: int | None
) -> MetricsServer | None:
    """A worker process's own metrics endpoint (``[engine.metrics] worker_port`` or
    ``--metrics-port``), or ``None`` when neither is set."""
    if port is None:
        return None
    from engine.metrics import serve_metrics

    token = settings.metrics.token
    server = serve_metrics(
        registry,
        settings.metrics.worker_host,
        port,
        token.get_secret_value() if token else None,
    )
    log.info(
        "metrics on http://%s:%d/metrics%s",
        settings.metrics.worker_host,
        server.port,
        " (bearer token)" if token else "",
    )
    return server


def _worker(
    settings: EngineSettings,
    drain: bool,
    workers: int,
    queues: list[str] | None = None,
    metrics_port: int | None = None,
) -> int:
    from engine.jobs import UnknownQueue
    from engine.services import build_services

    services = build_services(settings)
    try:
        chosen = services.queue.select(queues)
    except UnknownQueue as exc:
        print(f"tada-engine: --queues: {exc}", file=sys.stderr)
        asyncio.run(services.close())
        return 2
    services.db.migrate()
    services.worker.recover()
    if drain:
        ran = services.worker.drain(chosen)
        log.info("drained %d job message(s)", ran)
        asyncio.run(services.close())
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.environ.get(PARENT_PID_ENV)
    if parent:
        # A child of the bot's embedded engine: stop with it, even if it was killed.
        threading.Thread(target=_stop_when_orphaned, args=(int(parent), stop), daemon=True).start()
    port = metrics_port if metrics_port is not None else settings.metrics.worker_port
    metrics_server = start_metrics_endpoint(settings, services.metrics.registry, port)
    services.queue.start_consumer(workers, chosen)
    services.worker.start_heartbeat()
    services.start_warm_up()
    log.info(
        "worker running with %d thread(s) per queue on %s; Ctrl+C to stop",
        workers,
        ", ".join(chosen),
    )
    stop.wait()
    if metrics_server is not None:
        metrics_server.close()
    services.queue.stop_consumer()
    services.worker.stop_heartbeat()
    asyncio.run(services.close())
    return 0


def _models(settings: EngineSettings, args: argparse.Namespace) -> int:
    from engine import model_store

    if args.models_command == "list":
        pulled = model_store.list_models(settings.data_dir)
        configured = {
            "[engine.image] base_model": settings.image.get("base_model"),
            "[engine.voice] neural_model": settings.voice.get("neural_model"),
            "[engine.voice] pocket_model": settings.voice.get("pocket_model"),
            "[engine.voice] pocket_tokenizer": settings.voice.get("pocket_tokenizer"),
            "[engine.voice] qwen3_model": settings.voice.get("qwen3_model"),
        }
        for model in pulled:
            mark = "".join(
                f"  <- {key}"
                for key, value in configured.items()
                if value in (model.name, str(model.path))
            )
            print(f"{model.name}\t{model.size_bytes / 1e6:.1f} MB\t{model.path}{mark}")
        if not pulled:
            print(f"nothing pulled yet under {model_store.models_dir(settings.data_dir)}")
        return 0
    if args.source is None:
        return _pull_configured(settings, args.endpoint, offline_ok=args.offline_ok)
    try:
        model = model_store.pull(
            args.source,
            settings.data_dir,
            revision=args.revision,
            endpoint=args.endpoint,
            sha256=args.sha256,
        )
    except model_store.PullError as exc:
        print(f"tada-engine: {exc}", file=sys.stderr)
        return 1
    print(f"pulled {model.name}: {model.size_bytes / 1e6:.1f} MB in {model.path}")
    line = usage_line(model.name, model.path)
    if line is not None:
        print(line)
    return 0


def configured_pulls(
    settings: EngineSettings, *, cuda: bool | None = None
) -> list[tuple[str, list[str] | None, str | None]]:
    """What the config's voice back end loads from the hub: (hub id, files or None for
    the loadable ones, revision). "auto" pulls Pocket TTS, and on a host with a CUDA GPU
    (``cuda``; default: ask torch) Qwen3-TTS too."""
    from engine import model_store
    from engine.voice.choice import cuda_present
    from engine.voice.settings import VoiceBackendName, voice_settings

    voice = voice_settings(settings.voice)
    qwen3: list[tuple[str, list[str] | None, str | None]] = []
    # A pulled model is named by its folder here (the settings resolved the hub id): its
    # record says which repository it came from, so a new pinned revision pulls again.
    source = voice.qwen3_model
    record = Path(voice.qwen3_model).expanduser() / model_store.RECORD
    if not model_store.is_hub_id(source) and record.is_file():
        source = str(json.loads(record.read_text()).get("source", ""))
    if model_store.is_hub_id(source) and (
        voice.backend is VoiceBackendName.QWEN3
        or (voice.backend is VoiceBackendName.AUTO and (cuda_present() if cuda is None else cuda))
    ):
        qwen3 = [(source, None, voice.qwen3_revision or None)]
    if voice.backend is VoiceBackendName.QWEN3:
        return qwen3
    if voice.backend in (VoiceBackendName.POCKET, VoiceBackendName.AUTO):
        from engine.voice.pocket import pocket_config, required_files

        by_repo: dict[str, tuple[list[str], str | None]] = {}
        for repo, name, revision in required_files(pocket_config(voice)):
            files, _ = by_repo.setdefault(repo, ([], revision))
            files.append(name)
        pocket = [(repo, files, revision) for repo, (files, revision) in by_repo.items()]
        return pocket + qwen3
    if voice.backend is VoiceBackendName.NEURAL and model_store.is_hub_id(voice.neural_model):
        return [(voice.neural_model, None, None)]
    return []


def _at_revision(record: Path, revision: str | None) -> bool:
    """Whether a pulled folder is at ``revision`` as far as can be told offline: a pinned
    commit sha must be the one its record names; a branch or tag cannot be checked."""
    if revision is None or not re.fullmatch(r"[0-9a-f]{40}", revision):
        return True
    try:
        return bool(json.loads(record.read_text()).get("revision") == revision)
    except (OSError, ValueError, AttributeError):
        return False


def _pull_configured(settings: EngineSettings, endpoint: str | None, *, offline_ok: bool) -> int:
    """``models pull`` with no source: every model the config names that is not here yet."""
    from engine import model_store

    try:
        wanted = configured_pulls(settings)
    except Exception as exc:  # an invalid [engine.voice]: the engine says so at start too
        print(f"tada-engine: nothing pulled: {exc}", file=sys.stderr)
        return 1
    root = model_store.models_dir(settings.data_dir)
    for repo, files, revision in wanted:
        folder = root / model_store.local_name(repo)
        if (
            (folder / model_store.RECORD).is_file()
            and all((folder / f).is_file() for f in files or [])
            and _at_revision(folder / model_store.RECORD, revision)
        ):
            continue  # pulled before: no network needed
        try:
            model = model_store.pull_hub(
                repo, settings.data_dir, revision=revision, endpoint=endpoint, include=files
            )
        except model_store.HubUnreachable as exc:
            print(
                f"tada-engine: {exc}: voices use the CPU reference until `tada-engine models "
                "pull` runs with a network",
                file=sys.stderr,
            )
            return 0 if offline_ok else 1
        except model_store.PullError as exc:
            gated = "kyutai/pocket-tts" in repo and any(c in str(exc) for c in ("401", "403"))
            hint = (
                " (this repository is gated: accept its terms on "
                f"https://huggingface.co/{repo} and set HF_TOKEN)"
                if gated
                else ""
            )
            print(f"tada-engine: {exc}{hint}", file=sys.stderr)
            return 0 if offline_ok else 1
        print(f"pulled {model.name}: {model.size_bytes / 1e6:.1f} MB in {model.path}")
    if not wanted:
        print("the config names no model to pull")
    return 0


def usage_line(name: str, path: Path) -> str | None:
    """The config line that uses a pulled model, by what the model is."""
    if (path / "model_index.json").is_file():
        return f'use it: [engine.image] base_model = "{name}"'
    config = path / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (ValueError, AttributeError):
            model_type = None
        if model_type == "vibevoice":
            return f'use it: [engine.voice] backend = "neural" and neural_model = "{name}"'
        if model_type == "qwen3_tts":
            return f'use it: [engine.voice] backend = "qwen3" and qwen3_model = "{name}"'
    if path.suffix == ".safetensors":
        return f'use it as a LoRA: [engine.image.demos.tadz] lora_path = "{path}"'
    return None


def _stop_when_orphaned(parent: int, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        if os.getppid() != parent:
            log.info("the parent process is gone; stopping")
            stop.set()


def _interrupt_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    log.info("the parent process is gone; stopping")
    os.kill(os.getpid(), signal.SIGTERM)


def _migrate(settings: EngineSettings) -> int:
    from engine.db import Database

    db = Database(settings.resolved_database_url)
    db.migrate()
    asyncio.run(db.dispose())
    print(f"database is up to date: {settings.resolved_database_url.split('///')[-1]}")
    return 0


def _production_refusal(problems: list[SecretProblem]) -> str:
    """Every secret a production start lacks, in one message."""
    return "\n".join(
        [
            "tada-engine: production mode needs these secrets in the environment:",
            *(problem.render() for problem in problems),
            "Set them and start again (docs/deployment/server.md).",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line: each role a sub-command (and its flags)."""
    parser = argparse.ArgumentParser(prog="tada-engine", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: $TADA_CONFIG or ./config.toml)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API (with in-process workers)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes sharing the port (job consumers still run once, in this one)",
    )
    serve.add_argument(
        "--no-consumers",
        action="store_true",
        help="an API process only: no job runs here (separate `tada-engine worker` processes "
        "on a Redis queue run them)",
    )
    work = sub.add_parser("worker", help="run a separate job consumer")
    work.add_argument("--drain", action="store_true", help="run queued jobs, then exit")
    work.add_argument("--workers", type=int, default=1, help="consumer threads per queue")
    work.add_argument(
        "--queues",
        type=parse_queues,
        default=None,
        help="only these queues, comma-separated: voice, image (needs [engine.jobs] "
        "split_queues = true; default: every queue)",
    )
    work.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve this worker's Prometheus metrics on this port (default: [engine.metrics] "
        "worker_port; unset: none); one port per worker process on a machine",
    )
    sub.add_parser("migrate", help="apply database migrations and exit")
    doctor = sub.add_parser(
        "doctor",
        help="check ffmpeg, models, torch and the GPU, disk, the database, the queue and "
        "storage; print the fix for each problem (exit 1 if any)",
    )
    doctor.add_argument(
        "--min-free-gb",
        type=float,
        default=2.0,
        help="free space the data directory's disk needs (default: 2 GB)",
    )
    models = sub.add_parser("models", help="fetch model weights once (never at request time)")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    pull = models_sub.add_parser("pull", help="download a hub repository or one https file")
    pull.add_argument(
        "source",
        nargs="?",
        help="hub id (org/name) or https:// URL; none: every model the config names "
        "([engine.voice] backend) that is not pulled yet",
    )
    pull.add_argument(
        "--offline-ok",
        action="store_true",
        help="exit 0 when the hub cannot be reached or refuses (one line says so): "
        "the first start goes on with the CPU reference",
    )
    pull.add_argument("--revision", help="hub branch, tag or commit")
    pull.add_argument("--endpoint", help="hub endpoint (default: $HF_ENDPOINT or the hub)")
    pull.add_argument("--sha256", help="expected SHA-256 of a URL's file")
    models_sub.add_parser("list", help="what was pulled, and what the config points at")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Alembic's plugin and migration lines and huey's consumer banner are details.
    for name in DETAIL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # pyworld and webrtcvad import the deprecated pkg_resources; their modules hide the
    # warning with catch_warnings, which is not thread-safe (the voice warm-up imports them
    # in a thread), so the process says it once, here.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    # No signed URL, key or email in a log line (httpx prints every URL at INFO).
    quiet_url_loggers()
    scrub_root_handlers()
    try:
        # A worker started by the bot's embedded engine gets its parent's checked settings.
        inherited = settings_from_parent(os.environ)
        problems = [] if inherited else production_secret_problems(read_config_file(args.config))
        if problems:
            print(_production_refusal(problems), file=sys.stderr)
            return 2
        settings = inherited or load_engine_settings(args.config)
    except SettingsError as exc:
        print(f"tada-engine: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        if args.config is not None:  # the API processes read the same file
            os.environ["TADA_CONFIG"] = str(args.config.resolve())
        return _serve(settings, args.host, args.port, args.workers, consumers=not args.no_consumers)
    if args.command == "worker":
        return _worker(settings, args.drain, args.workers, args.queues, args.metrics_port)
    if args.command == "models":
        return _models(settings, args)
    if args.command == "doctor":
        from engine.doctor import doctor

        return doctor(settings, sys.stdout, int(args.min_free_gb * 1024**3))
    return _migrate(settings)


if __name__ == "__main__":
    sys.exit(main())
