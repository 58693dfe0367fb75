"""``create_app(settings)``: the FastAPI application of the Ta-da engine."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from engine.api import demo, loras, storage, users, voices
from engine.jobs import Handler
from engine.services import EngineServices, build_services
from engine.settings import EngineSettings

log = logging.getLogger(__name__)


async def start_services(services: EngineServices, *, consumer: bool) -> None:
    """Migrate the database; with ``consumer``, recover stranded jobs and start workers
    (which report their devices and load the voice models in the background)."""
    await anyio.to_thread.run_sync(services.db.migrate)
    workers = services.settings.jobs.in_process_workers
    if consumer and workers > 0:
        await anyio.to_thread.run_sync(services.worker.recover)
        services.queue.start_consumer(workers)
        services.start_warm_up()


def create_app(
    settings: EngineSettings, *, handlers: Mapping[str, Handler] | None = None
) -> FastAPI:
    """Build the engine app. Services start in the lifespan and close when it ends."""
    services = build_services(settings, handlers=handlers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await start_services(services, consumer=True)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(services.queue.stop_consumer)
            await services.close()

    app = FastAPI(
        title="Ta-da engine",
        version="0.1.0",
        description="Self-hostable implementation of the Ta-da API (voice cloning, LoRA images).",
        lifespan=lifespan,
    )
    app.state.services = services
    for module in (users, voices, loras, demo, storage):
        app.include_router(module.router)

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
