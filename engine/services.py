"""The engine's composition root: every long-lived object, built in one place."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

from engine.db import Database
from engine.image.handlers import image_handlers
from engine.jobs import Handler, JobQueue, JobService, JobWorker, build_huey
from engine.security import KeyCache, UrlSigner
from engine.settings import EngineSettings
from engine.storage import LocalStorage
from engine.voice.jobs import voice_handlers

log = logging.getLogger(__name__)


def default_handlers(settings: EngineSettings) -> dict[str, Handler]:
    """The job handlers of the real back ends (voice, image), keyed by job kind."""
    handlers: dict[str, Handler] = {}
    handlers.update(image_handlers(settings))
    handlers.update(voice_handlers(settings))
    return handlers


@dataclass
class EngineServices:
    """Everything a request or a worker needs; closed with :meth:`close`."""

    settings: EngineSettings
    db: Database
    storage: LocalStorage
    signer: UrlSigner
    queue: JobQueue
    worker: JobWorker
    jobs: JobService
    # API key hash -> user id, for a minute: spares a SELECT per authenticated request.
    keys: KeyCache = field(default_factory=KeyCache)

    def signed_url(self, base_url: str, method: str, path: str, resource: str, ttl: int) -> str:
        """An absolute URL for ``path`` signed for ``method`` on ``resource``."""
        expires, sig = self.signer.issue(method, resource, ttl)
        base = (self.settings.public_url or base_url).rstrip("/")
        return f"{base}{path}?{urlencode({'expires': expires, 'signature': sig})}"

    def artifact_url(self, base_url: str, key: str) -> str:
        """A signed, expiring GET URL for a stored artifact (audio, image)."""
        return self.signed_url(
            base_url,
            "GET",
            f"/storage/artifacts/{key}",
            f"artifact:{key}",
            self.settings.uploads.artifact_url_ttl_seconds,
        )

    async def close(self) -> None:
        self.queue.close()
        await self.db.dispose()


def build_services(
    settings: EngineSettings, *, handlers: Mapping[str, Handler] | None = None
) -> EngineServices:
    """Build the services; ``handlers`` replaces the default back ends (tests use it)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    storage = LocalStorage(settings.data_dir / "files")
    signer = UrlSigner(settings.signing_key())
    queue = JobQueue(build_huey(settings))
    worker = JobWorker(
        settings=settings,
        sessions=db.sync_session,
        storage=storage,
        queue=queue,
        handlers=default_handlers(settings) if handlers is None else handlers,
    )
    jobs = JobService(
        sessions=db.session,
        queue=queue,
        max_attempts=settings.jobs.max_attempts,
        max_pending_per_user=settings.limits.max_pending_jobs,
    )
    return EngineServices(
        settings=settings,
        db=db,
        storage=storage,
        signer=signer,
        queue=queue,
        worker=worker,
        jobs=jobs,
    )
