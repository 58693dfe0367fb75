"""``create_app(settings)``: the FastAPI application of the Ta-da engine."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import choose_encoder

from engine.api import demo, images, loras, storage, trace, users, voices
from engine.api.errors import install_error_handlers
from engine.api.guard import RateLimits, RequestGuard
from engine.api.metrics import RequestMetrics
from engine.jobs import Handler, TooManyPendingJobs
from engine.logs import install_access_log_redactor
from engine.metrics import bearer_matches
from engine.services import EngineServices, build_services
from engine.settings import EngineSettings
from engine.voice.backend import VoiceBackend
from engine.voice.watermark import Watermarker

log = logging.getLogger(__name__)


async def start_services(services: EngineServices, *, consumer: bool) -> None:
    """Migrate the database; with ``consumer``, recover stranded jobs and start workers
    (which report their devices and load the voice models in the background)."""
    await anyio.to_thread.run_sync(services.db.migrate)
    workers = services.settings.jobs.in_process_workers
    if consumer and workers > 0:
        await anyio.to_thread.run_sync(services.worker.recover)
        services.queue.start_consumer(workers)
        services.worker.start_heartbeat()
        services.start_warm_up()
    elif services.voice.settings.preload:
        services.start_warm_up(models=False)  # an API process: the language detector


def _finite(value: object) -> object:
    """``value`` with every non-finite float (NaN, infinities) written as its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class SafeJSONResponse(JSONResponse):
    """JSON whose strings may hold lone surrogates (they become U+FFFD) and whose numbers
    may not be finite (they become text): never a 500 while answering a 422."""

    def render(self, content: object) -> bytes:
        text = json.dumps(
            _finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
        return text.encode("utf-8", errors="replace")


def create_app(
    settings: EngineSettings,
    *,
    handlers: Mapping[str, Handler] | None = None,
    voice_backend: VoiceBackend | None = None,
    watermarker: Watermarker | None = None,
) -> FastAPI:
    """Build the engine app. Services start in the lifespan and close when it ends
    (``handlers``, ``voice_backend`` and ``watermarker``: see
    :func:`engine.services.build_services`)."""
    services = build_services(
        settings, handlers=handlers, voice_backend=voice_backend, watermarker=watermarker
    )
    rates = RateLimits(settings.limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await start_services(services, consumer=True)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(services.queue.stop_consumer)
            await anyio.to_thread.run_sync(services.worker.stop_heartbeat)
            await services.close()
            await rates.close()

    app = FastAPI(
        title="Ta-da engine",
        version="0.1.0",
        description="Self-hostable implementation of the Ta-da API (voice cloning, LoRA images).",
        lifespan=lifespan,
    )
    app.state.services = services
    services.metrics.watch_queues(
        services.db.sync_session, services.queue.queue_for, services.queue.names
    )
    app.add_middleware(RequestGuard, settings=settings.limits, rates=rates)
    # Added last, so outermost: the guard's refusals (413, 429) are counted too.
    app.add_middleware(RequestMetrics, metrics=services.metrics)
    install_access_log_redactor()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler echoes the input, which may hold text that cannot be
        # encoded (a lone surrogate in a field of the wrong type): encode it safely.
        return SafeJSONResponse(status_code=422, content={"detail": jsonable_encoder(exc.errors())})

    install_error_handlers(app, validation=invalid_request)

    @app.exception_handler(TooManyPendingJobs)
    async def too_many_jobs(request: Request, exc: TooManyPendingJobs) -> Response:
        return JSONResponse(
            status_code=429, content={"detail": str(exc)}, headers={"Retry-After": "30"}
        )

    for module in (users, voices, loras, demo, images, storage, trace):
        app.include_router(module.router)

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    metrics_token = settings.metrics.token

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        # Operators' only: no token configured, no endpoint (404, as for any unknown path).
        if metrics_token is None:
            return JSONResponse(status_code=404, content={"detail": "Not Found"})
        if not bearer_matches(
            request.headers.get("authorization"), metrics_token.get_secret_value()
        ):
            return JSONResponse(
                status_code=401,
                content={
                    "detail": "metrics need Authorization: Bearer <TADA_ENGINE_METRICS_TOKEN>"
                },
                headers={"WWW-Authenticate": "Bearer"},
            )
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        # The queue collector reads the database: off the event loop.
        body = await anyio.to_thread.run_sync(encode, services.metrics.registry)
        return Response(content=body, headers={"Content-Type": content_type})

    return app
