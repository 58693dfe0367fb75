"""The engine's composition root: every long-lived object, built in one place."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

from engine.db import Database
from engine.image.handlers import image_handlers
from engine.jobs import Handler, JobQueue, JobService, JobWorker, build_hueys
from engine.metrics import EngineMetrics
from engine.security import UrlSigner
from engine.settings import EngineSettings
from engine.storage import Storage
from engine.storage.local import LocalStorage
from engine.voice.backend import VoiceBackend
from engine.voice.handlers import VoiceHandlers
from engine.voice.settings import voice_settings
from engine.voice.watermark import Watermarker

log = logging.getLogger(__name__)
# How long closing waits for a warm-up to reach its next step (one model load).
WARM_UP_JOIN_SECONDS = 120.0


def default_handlers(
    settings: EngineSettings, voice: VoiceHandlers, metrics: EngineMetrics | None = None
) -> dict[str, Handler]:
    """The job handlers of the real back ends (voice, image), keyed by job kind."""
    handlers: dict[str, Handler] = {}
    on_load = None if metrics is None else metrics.model_loaded
    handlers.update(image_handlers(settings, on_model_loaded=on_load))
    handlers.update(voice.handlers())
    return handlers


@dataclass
class EngineServices:
    """Everything a request or a worker needs; closed with :meth:`close`."""

    settings: EngineSettings
    db: Database
    storage: Storage
    signer: UrlSigner
    queue: JobQueue
    worker: JobWorker
    jobs: JobService
    # The voice back end and its job handlers (the back end is built on first use).
    voice: VoiceHandlers
    # This process's Prometheus metrics (its own registry; engine/metrics.py).
    metrics: EngineMetrics = field(default_factory=EngineMetrics)
    # The background warm-up of a worker (:meth:`start_warm_up`), once started.
    warm_up_thread: threading.Thread | None = None
    _warm_up_stop: threading.Event = field(default_factory=threading.Event)

    def signed_url(self, base_url: str, method: str, path: str, resource: str, ttl: int) -> str:
        """An absolute URL for ``path`` signed for ``method`` on ``resource``."""
        expires, sig = self.signer.issue(method, resource, ttl)
        base = (self.settings.public_url or base_url).rstrip("/")
        return f"{base}{path}?{urlencode({'expires': expires, 'signature': sig})}"

    def artifact_url(self, base_url: str, key: str) -> str:
        """A signed, expiring GET URL for a stored artifact (audio, image): the object
        store's own when it has one, else the engine's."""
        ttl = self.settings.uploads.artifact_url_ttl_seconds
        direct = self.storage.presigned_get(key, ttl)
        if direct is not None:
            return direct
        return self.signed_url(
            base_url,
            "GET",
            f"/storage/artifacts/{key}",
            f"artifact:{key}",
            ttl,
        )

    def upload_url(self, base_url: str, upload_id: str, content_type: str) -> tuple[str, int]:
        """Where a client PUTs an upload, and when that URL expires (epoch seconds): the
        object store's own pre-signed URL when it has one, else the engine's."""
        ttl = self.settings.uploads.url_ttl_seconds
        direct = self.storage.presigned_put(upload_id, content_type, ttl)
        if direct is not None:
            return direct, int(time.time()) + ttl
        expires, sig = self.signer.issue("PUT", f"upload:{upload_id}", ttl)
        base = (self.settings.public_url or base_url).rstrip("/")
        query = urlencode({"expires": expires, "signature": sig})
        return f"{base}/storage/uploads/{upload_id}?{query}", expires

    def start_warm_up(self, *, models: bool = True) -> threading.Thread:
        """Where a worker starts (``models``): say which device and dtype each back end
        uses, and load the voice models; where the API answers: load the text's language
        detector. Both with ``[engine.voice] preload``, in a background thread, so that
        neither the start nor the first member's clone or speech waits for them."""
        thread = threading.Thread(
            target=warm_up,
            args=(self.settings, self.voice, self._warm_up_stop, self.metrics),
            kwargs={"models": models},
            name="engine-warm-up",
            daemon=True,
        )
        thread.start()
        self.warm_up_thread = thread
        return thread

    async def close(self) -> None:
        # A warm-up still loading stops at its next step and is waited for: a process that
        # exits while onnxruntime or torch loads a model in a thread aborts.
        self._warm_up_stop.set()
        if self.warm_up_thread is not None:
            if self.warm_up_thread.is_alive():
                log.info("engine: stopping once the model being loaded is in (seconds)")
            await asyncio.to_thread(self.warm_up_thread.join, WARM_UP_JOIN_SECONDS)
        self.queue.close()
        await self.db.dispose()


def warm_up(
    settings: EngineSettings,
    voice: VoiceHandlers,
    stop: threading.Event | None = None,
    metrics: EngineMetrics | None = None,
    *,
    models: bool = True,
) -> None:
    """With ``models`` (a worker), log the device report, then load the voice models when
    configured (blocking; the load's time goes to ``metrics``); then, when configured, the
    language detector the API asks before each speech (about 1-2 s to load, else paid by
    the first member's speech)."""
    try:
        if models:
            # Imported here: torch loads only where a worker runs.
            from engine.devices import log_device_report
            from engine.image.settings import image_settings

            log_device_report(image_settings(settings.image), voice_line=voice.backend.describe())
        if voice.settings.preload and not (stop is not None and stop.is_set()):
            if models:
                started = time.perf_counter()
                if voice.warm_up(stop) and metrics is not None:
                    metrics.model_loaded("voice", time.perf_counter() - started)
            if not (stop is not None and stop.is_set()):
                voice.languages.warm_up()
    except Exception:  # a report must never take the worker down; jobs say what is wrong
        log.exception("engine: warm-up failed")


def build_storage(settings: EngineSettings) -> Storage:
    """The file store ``[engine.storage]`` names: the data directory, or an S3 bucket."""
    root = settings.data_dir / "files"
    if settings.storage.backend == "s3":
        # Imported here: boto3 loads only where object storage is configured.
        from engine.storage.s3 import S3Storage

        return S3Storage(settings.storage, scratch=root / "tmp", cache=root / "cache")
    return LocalStorage(root)


def build_services(
    settings: EngineSettings,
    *,
    handlers: Mapping[str, Handler] | None = None,
    voice_backend: VoiceBackend | None = None,
    watermarker: Watermarker | None = None,
    metrics: EngineMetrics | None = None,
) -> EngineServices:
    """Build the services; ``handlers`` replaces the default back ends (tests use it),
    ``voice_backend`` the voice back end ``[engine.voice]`` names and ``watermarker`` the
    watermark's net (tests share one loaded instance of each between many engines of one
    process). ``metrics``: this process's metrics (a fresh registry by default)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    metrics = metrics if metrics is not None else EngineMetrics()
    db = Database(settings.resolved_database_url)
    storage = build_storage(settings)
    signer = UrlSigner(settings.signing_key())
    queue = JobQueue(build_hueys(settings))
    voice = VoiceHandlers(
        voice_settings(settings.voice),
        backend=voice_backend,
        watermarker=watermarker,
        storage=storage,
    )
    worker = JobWorker(
        settings=settings,
        sessions=db.sync_session,
        storage=storage,
        queue=queue,
        handlers=default_handlers(settings, voice, metrics) if handlers is None else handlers,
        metrics=metrics,
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
        voice=voice,
        metrics=metrics,
    )
