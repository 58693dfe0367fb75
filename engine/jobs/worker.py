"""Claiming and running jobs. Blocking code: it runs in huey's worker threads or processes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from engine.jobs.queue import JobQueue
from engine.metrics import EngineMetrics, JobOutcome
from engine.models import Job, JobStatus, as_utc, utcnow
from engine.settings import EngineSettings
from engine.storage import Storage

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """A handler's refusal: the job fails with this message and is not retried."""


class JobCanceled(Exception):
    """Raised by :meth:`JobContext.check_canceled` when the job was canceled."""


@dataclass
class JobContext:
    """What a handler gets: its job's data and the means to report on it."""

    job_id: str
    kind: str
    user_id: str | None
    payload: dict[str, Any]
    attempt: int
    settings: EngineSettings
    storage: Storage
    sessions: sessionmaker[Session]
    _last_progress: int = field(default=-1, repr=False)

    def report(self, progress: int) -> None:
        """Write progress (0-100) to the job row; cheap to call often."""
        progress = max(0, min(100, int(progress)))
        if progress == self._last_progress:
            return
        self._last_progress = progress
        with self.sessions.begin() as s:
            s.execute(update(Job).where(Job.id == self.job_id).values(progress=progress))

    def check_canceled(self) -> None:
        """Raise :class:`JobCanceled` if someone canceled this job meanwhile."""
        with self.sessions() as s:
            status = s.scalar(select(Job.status).where(Job.id == self.job_id))
        if status == JobStatus.CANCELED.value:
            raise JobCanceled(self.job_id)


Handler = Callable[[JobContext], "dict[str, Any] | None"]


class JobWorker:
    """Runs jobs by kind with the handlers it was given; the row records every outcome."""

    def __init__(
        self,
        *,
        settings: EngineSettings,
        sessions: sessionmaker[Session],
        storage: Storage,
        queue: JobQueue,
        handlers: Mapping[str, Handler],
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.settings = settings
        # Each run's duration and outcome (the composition root's registry; None: none).
        self.metrics = metrics
        self.sessions = sessions
        self.storage = storage
        self.queue = queue
        self.handlers = dict(handlers)
        # The jobs this process is running now: its heartbeat keeps them its own.
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        queue.bind(self.execute)

    @property
    def shared_queue(self) -> bool:
        """True when other worker processes may consume the same queue (Redis)."""
        return self.settings.jobs.backend == "redis"

    def _claim(self, job_id: str) -> Job | None:
        with self.sessions.begin() as s:
            claimed = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
                .values(
                    status=JobStatus.PROCESSING.value,
                    attempts=Job.attempts + 1,
                    started_at=utcnow(),
                    heartbeat_at=utcnow(),
                    error=None,
                )
            ).rowcount  # type: ignore[attr-defined]
            if not claimed:
                return None
            return s.get(Job, job_id)

    def _finish(self, job_id: str, attempt: int | None = None, **values: Any) -> None:
        """Record the outcome, unless the job was taken back meanwhile (a later attempt)."""
        conditions = [Job.id == job_id, Job.status == JobStatus.PROCESSING.value]
        if attempt is not None:
            conditions.append(Job.attempts == attempt)
        with self.sessions.begin() as s:
            s.execute(update(Job).where(*conditions).values(finished_at=utcnow(), **values))

    def execute(self, job_id: str) -> None:
        """Claim and run one job. A message for a job already taken is a no-op."""
        job = self._claim(job_id)
        if job is None:
            return
        with self._running_lock:
            self._running.add(job_id)
        try:
            self._run(job)
        finally:
            with self._running_lock:
                self._running.discard(job_id)

    def _run(self, job: Job) -> None:
        started = time.perf_counter()
        outcome, reason = self._outcome_of(job)
        if self.metrics is not None:
            self.metrics.job_ran(job.kind, outcome, time.perf_counter() - started, reason)

    def _outcome_of(self, job: Job) -> tuple[str, str | None]:
        """Run the job's handler and record its outcome in the row; return the outcome
        and, for a failure, its reason (the labels of the job metrics)."""
        job_id = job.id
        handler = self.handlers.get(job.kind)
        if handler is None:
            self._finish(
                job_id,
                job.attempts,
                status=JobStatus.FAILED.value,
                error=f"no handler for job kind {job.kind!r} on this worker",
            )
            return JobOutcome.FAILED, "no_handler"
        ctx = JobContext(
            job_id=job.id,
            kind=job.kind,
            user_id=job.user_id,
            payload=dict(job.payload or {}),
            attempt=job.attempts,
            settings=self.settings,
            storage=self.storage,
            sessions=self.sessions,
        )
        try:
            result = handler(ctx)
        except JobCanceled:
            log.info("job %s canceled while running", job_id)
            return JobOutcome.CANCELED, None
        except JobFailed as exc:
            self._finish(
                job_id, job.attempts, status=JobStatus.FAILED.value, error=str(exc) or "failed"
            )
            return JobOutcome.FAILED, "refused"
        except Exception:
            log.exception("job %s (%s) attempt %d crashed", job_id, job.kind, job.attempts)
            if job.attempts < job.max_attempts:
                self._requeue(job_id, job.kind)
            else:
                self._finish(
                    job_id,
                    job.attempts,
                    status=JobStatus.FAILED.value,
                    # The exception's text is in the log above; the job's error is read
                    # back by callers (API answers, the bot), who must not see internals.
                    error=f"internal error after {job.attempts} attempt(s); the engine's "
                    f"log has the details (job {job_id})",
                )
            return JobOutcome.CRASHED, "crashed"
        self._finish(
            job_id,
            job.attempts,
            status=JobStatus.SUCCEEDED.value,
            progress=100,
            result=result or {},
        )
        return JobOutcome.SUCCEEDED, None

    def _requeue(self, job_id: str, kind: str) -> None:
        with self.sessions.begin() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(status=JobStatus.QUEUED.value, started_at=None, heartbeat_at=None)
            )
        self.queue.enqueue(job_id, kind)

    def recover(self) -> tuple[int, int]:
        """At start: take back jobs left processing (or fail them past the limit).

        Jobs still queued are enqueued again too: if their message was lost they would
        otherwise wait forever, and a duplicate message is harmless (claiming is atomic).
        On a shared queue (Redis) a job another worker still beats for is left to it.
        Returns ``(requeued, failed)``.
        """
        return self._take_back(include_queued=True)

    def reap(self) -> tuple[int, int]:
        """Take back the processing jobs whose worker stopped beating (shared queue only)."""
        if not self.shared_queue:
            return (0, 0)
        return self._take_back(include_queued=False)

    def _take_back(self, *, include_queued: bool) -> tuple[int, int]:
        statuses = [JobStatus.PROCESSING.value]
        if include_queued:
            statuses.append(JobStatus.QUEUED.value)
        cutoff = utcnow() - timedelta(seconds=self.settings.jobs.stale_after_seconds)
        with self._running_lock:
            mine = set(self._running)
        requeued: list[tuple[str, str]] = []
        failed = 0
        with self.sessions.begin() as s:
            rows = s.scalars(select(Job).where(Job.status.in_(statuses))).all()
            for job in rows:
                if job.status == JobStatus.PROCESSING.value:
                    if job.id in mine or (self.shared_queue and _beating(job, cutoff)):
                        continue
                    if job.attempts >= job.max_attempts:
                        job.status = JobStatus.FAILED.value
                        job.finished_at = utcnow()
                        job.error = f"interrupted by a restart {job.attempts} time(s); gave up"
                        failed += 1
                        continue
                    job.started_at = None
                    job.heartbeat_at = None
                job.status = JobStatus.QUEUED.value
                requeued.append((job.id, job.kind))
        for job_id, kind in requeued:
            self.queue.enqueue(job_id, kind)
        if requeued or failed:
            log.warning("recovered jobs: %d re-queued, %d failed", len(requeued), failed)
        return len(requeued), failed

    def beat(self) -> None:
        """Write the heartbeat of every job this process is running."""
        with self._running_lock:
            running = list(self._running)
        if not running:
            return
        with self.sessions.begin() as s:
            s.execute(
                update(Job)
                .where(Job.id.in_(running), Job.status == JobStatus.PROCESSING.value)
                .values(heartbeat_at=utcnow())
            )

    def start_heartbeat(self) -> None:
        """Beat for this process's jobs and, on a shared queue, reap dead workers' jobs."""
        if self._heartbeat is not None:
            return
        self._heartbeat_stop.clear()
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name="engine-job-heartbeat", daemon=True
        )
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        thread, self._heartbeat = self._heartbeat, None
        if thread is not None:
            self._heartbeat_stop.set()
            thread.join(timeout=30)

    def _heartbeat_loop(self) -> None:
        while not self._heartbeat_stop.wait(self.settings.jobs.heartbeat_seconds):
            try:
                self.beat()
                self.reap()
            except Exception:  # the database may be away a moment; the next beat retries
                log.exception("job heartbeat failed")

    def drain(self, queues: Iterable[str] | None = None) -> int:
        """Run queued messages in this thread until the queues (all by default) are empty;
        return how many ran."""
        ran = 0
        while self.queue.run_one(queues):
            ran += 1
        return ran


def _beating(job: Job, cutoff: datetime) -> bool:
    """Whether the job's worker wrote a heartbeat after ``cutoff`` (it is alive)."""
    return job.heartbeat_at is not None and as_utc(job.heartbeat_at) > cutoff
