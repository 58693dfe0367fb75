"""``tada-engine``: serve the API, run a job worker, or apply migrations."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from pathlib import Path

from engine.settings import (
    EngineSettings,
    SecretProblem,
    SettingsError,
    load_engine_settings,
    production_secret_problems,
    read_config_file,
)

log = logging.getLogger("engine")
KEEP_ALIVE_SECONDS = 75
DETAIL_LOGGERS = ("alembic", "huey")


def _serve(settings: EngineSettings, host: str | None, port: int | None) -> int:
    import uvicorn

    from engine.app import create_app

    app = create_app(settings)
    uvicorn.run(
        app,
        host=host or settings.host,
        port=port if port is not None else settings.port,
        log_level="info",
        # Longer than clients keep idle connections (httpx: 5 s), so the client closes an
        # idle connection first. With both at 5 s, a request sent just as the server timed
        # the connection out was lost (ReadError; 11 of 10,000 GETs at 500 clients).
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # X-Forwarded-For/-Proto only from the proxies the operator named; by default
        # (uvicorn trusts 127.0.0.1) any local process could choose its client address.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=",".join(settings.trusted_proxies) or None,
    )
    return 0


def _worker(settings: EngineSettings, drain: bool, workers: int) -> int:
    from engine.services import build_services

    services = build_services(settings)
    services.db.migrate()
    services.worker.recover()
    if drain:
        ran = services.worker.drain()
        log.info("drained %d job message(s)", ran)
        asyncio.run(services.close())
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    services.queue.start_consumer(workers)
    services.worker.start_heartbeat()
    services.start_warm_up()
    log.info("worker running with %d thread(s); Ctrl+C to stop", workers)
    stop.wait()
    services.queue.stop_consumer()
    services.worker.stop_heartbeat()
    asyncio.run(services.close())
    return 0


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
            'Set them and start again (README, "Running it for a real server").',
        ]
    )


def main(argv: list[str] | None = None) -> int:
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
    work = sub.add_parser("worker", help="run a separate job consumer")
    work.add_argument("--drain", action="store_true", help="run queued jobs, then exit")
    work.add_argument("--workers", type=int, default=1)
    sub.add_parser("migrate", help="apply database migrations and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Alembic's plugin and migration lines and huey's consumer banner are details.
    for name in DETAIL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        problems = production_secret_problems(read_config_file(args.config))
        if problems:
            print(_production_refusal(problems), file=sys.stderr)
            return 2
        settings = load_engine_settings(args.config)
    except SettingsError as exc:
        print(f"tada-engine: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(settings, args.host, args.port)
    if args.command == "worker":
        return _worker(settings, args.drain, args.workers)
    return _migrate(settings)


if __name__ == "__main__":
    sys.exit(main())
