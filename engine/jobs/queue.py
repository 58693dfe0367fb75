"""Transport of job ids over huey, and its in-process consumer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from huey import Huey, RedisHuey, SqliteHuey
from huey.consumer import Consumer

from engine.settings import EngineSettings

log = logging.getLogger(__name__)
TASK_NAME = "tada.run_job"


def build_huey(settings: EngineSettings) -> Huey:
    """The huey instance named by ``[engine.jobs]``: a SQLite file or Redis."""
    if settings.jobs.backend == "redis":
        return RedisHuey("tada", url=settings.jobs.redis_url, results=False)
    path = Path(settings.data_dir) / "queue.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteHuey("tada", filename=str(path), results=False)


class _QuietConsumer(Consumer):
    """A consumer that leaves signal handling to the host process (uvicorn)."""

    def _set_signal_handlers(self) -> None:
        return None


class JobQueue:
    """Enqueue job ids; run them through the executor bound with :meth:`bind`."""

    def __init__(self, huey: Huey) -> None:
        self.huey = huey
        self._executor: Callable[[str], None] | None = None
        self._task = huey.task(name=TASK_NAME)(self._run)
        self._consumer: Consumer | None = None

    def bind(self, executor: Callable[[str], None]) -> None:
        self._executor = executor

    def _run(self, job_id: str) -> None:
        if self._executor is None:
            raise RuntimeError("JobQueue has no executor bound")
        self._executor(job_id)

    def enqueue(self, job_id: str) -> None:
        """Blocking: put the id on the queue (call from a thread in async code)."""
        self._task(job_id)

    def pending(self) -> int:
        return int(self.huey.pending_count())

    def run_one(self) -> bool:
        """Run the next queued message in this thread; False when the queue is empty."""
        task = self.huey.dequeue()
        if task is None:
            return False
        self.huey.execute(task)
        return True

    def start_consumer(self, workers: int) -> None:
        """Start ``workers`` consumer threads in this process."""
        if workers <= 0 or self._consumer is not None:
            return
        self._consumer = _QuietConsumer(
            self.huey,
            workers=workers,
            worker_type="thread",
            periodic=False,
            initial_delay=0.05,
            max_delay=0.5,
            check_worker_health=False,
        )
        self._consumer.start()
        log.info("in-process job consumer started with %d worker(s)", workers)

    def stop_consumer(self) -> None:
        if self._consumer is not None:
            self._consumer.stop(graceful=True)
            self._consumer = None

    def close(self) -> None:
        self.stop_consumer()
        storage = self.huey.storage
        close = getattr(storage, "close", None)
        if callable(close):
            close()
