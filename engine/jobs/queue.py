"""Transport of job ids over huey, and its in-process consumer.

One queue carries every job by default. With ``[engine.jobs] split_queues = true`` each job
kind's family has a queue of its own (:data:`QUEUES`: ``voice.*`` jobs on ``voice``,
``image.*`` on ``image``), so that ``tada-engine worker --queues image`` takes only image
jobs (a GPU machine) while another worker takes the voice jobs (a CPU machine).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from huey import Huey, RedisHuey, SqliteHuey
from huey.consumer import Consumer, Worker

from engine.settings import EngineSettings

log = logging.getLogger(__name__)
TASK_NAME = "tada.run_job"
# The queues of ``split_queues``, named after the job kinds' prefixes (``voice.clone``).
QUEUES = ("voice", "image")
# The one queue of the default layout: every kind.
ALL_QUEUES = "all"
# An idle consumer thread looks at its queue after this long, then less and less often (up
# to POLL_MAX_SECONDS). A job enqueued by this process wakes it at once (the API with its
# in-process workers, the default); a job from another process is seen at the next look.
POLL_FIRST_SECONDS = 0.05
POLL_MAX_SECONDS = 0.5


class UnknownQueue(ValueError):
    """A queue name that this engine's layout does not have; the message lists those it has."""


def queue_of(kind: str) -> str:
    """The split queue a job kind travels on (its prefix; unknown kinds go with voice)."""
    prefix = kind.split(".", 1)[0]
    return prefix if prefix in QUEUES else QUEUES[0]


def build_huey(settings: EngineSettings, name: str = "tada") -> Huey:
    """A huey instance on ``[engine.jobs]``'s back end (a SQLite file or Redis)."""
    if settings.jobs.backend == "redis":
        return RedisHuey(name, url=settings.jobs.redis_url, results=False)
    path = Path(settings.data_dir) / "queue.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(name, filename=str(path), results=False)


def build_hueys(settings: EngineSettings) -> dict[str, Huey]:
    """The queues of ``[engine.jobs]``: one for all jobs, or one per :data:`QUEUES` entry."""
    if not settings.jobs.split_queues:
        return {ALL_QUEUES: build_huey(settings)}
    return {name: build_huey(settings, f"tada-{name}") for name in QUEUES}


class _WakeableWorker(Worker):
    """A huey worker thread whose idle wait ends as soon as ``wake`` is set (this process
    enqueued a job), instead of at its next poll of the queue."""

    delay: float
    default_delay: float
    max_delay: float
    backoff: float

    def __init__(self, *args: object, wake: threading.Event, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.wake = wake

    def sleep(self) -> None:
        delay: float = min(self.delay, self.max_delay)
        if self.wake.wait(delay):
            self.wake.clear()
            self.delay = self.default_delay
        else:
            self.delay = delay * self.backoff


class _QuietConsumer(Consumer):
    """A consumer that leaves signal handling to the host process (uvicorn), and whose
    worker threads wake on ``wake``."""

    def __init__(self, huey: Huey, *, wake: threading.Event, **kwargs: object) -> None:
        self.wake = wake
        super().__init__(huey, **kwargs)

    def _create_worker(self) -> Worker:
        return _WakeableWorker(
            huey=self.huey,
            stop_flag=self.stop_flag,
            default_delay=self.default_delay,
            max_delay=self.max_delay,
            backoff=self.backoff,
            max_tasks=self.max_tasks,
            wake=self.wake,
        )

    def _set_signal_handlers(self) -> None:
        return None


class JobQueue:
    """Enqueue job ids; run them through the executor bound with :meth:`bind`.

    ``hueys``: one huey (every job on it) or the split queues by name (:func:`build_hueys`).
    """

    def __init__(self, hueys: Huey | Mapping[str, Huey]) -> None:
        self.hueys = dict(hueys) if isinstance(hueys, Mapping) else {ALL_QUEUES: hueys}
        self.huey = next(iter(self.hueys.values()))
        self._executor: Callable[[str], None] | None = None
        self._tasks = {
            name: huey.task(name=TASK_NAME)(self._run) for name, huey in self.hueys.items()
        }
        self._consumers: list[_QuietConsumer] = []
        # Set by enqueue: wakes this process's idle consumer threads of that queue.
        self._wakes = {name: threading.Event() for name in self.hueys}

    @property
    def names(self) -> list[str]:
        """The queues of this layout (``["all"]`` or :data:`QUEUES`)."""
        return list(self.hueys)

    def select(self, queues: Iterable[str] | None) -> list[str]:
        """The named queues (all when ``None``); :class:`UnknownQueue` for a name not here."""
        if queues is None:
            return self.names
        chosen = list(dict.fromkeys(queues))
        unknown = [q for q in chosen if q not in self.hueys]
        if unknown or not chosen:
            have = ", ".join(self.names)
            hint = (
                "; one queue carries every job unless [engine.jobs] split_queues = true "
                "(in every API and worker process's config)"
                if self.names == [ALL_QUEUES]
                else ""
            )
            raise UnknownQueue(f"no queue {', '.join(unknown) or '(none)'}: have {have}{hint}")
        return chosen

    def bind(self, executor: Callable[[str], None]) -> None:
        self._executor = executor

    def _run(self, job_id: str) -> None:
        if self._executor is None:
            raise RuntimeError("JobQueue has no executor bound")
        self._executor(job_id)

    def queue_for(self, kind: str) -> str:
        """The name of the queue a job kind travels on in this layout."""
        return ALL_QUEUES if ALL_QUEUES in self.hueys else queue_of(kind)

    def enqueue(self, job_id: str, kind: str | None = None) -> None:
        """Blocking: put the id on its kind's queue (call from a thread in async code).

        ``kind`` chooses the queue when they are split; without it, the first one. This
        process's consumer threads of that queue wake at once."""
        name = self.queue_for(kind or "")
        self._tasks[name](job_id)
        self._wakes[name].set()

    def pending(self, queues: Iterable[str] | None = None) -> int:
        return sum(int(self.hueys[q].pending_count()) for q in self.select(queues))

    def run_one(self, queues: Iterable[str] | None = None) -> bool:
        """Run the next queued message in this thread; False when the queues are empty."""
        for name in self.select(queues):
            huey = self.hueys[name]
            task = huey.dequeue()
            if task is not None:
                huey.execute(task)
                return True
        return False

    def start_consumer(
        self,
        workers: int,
        queues: Iterable[str] | None = None,
        *,
        poll_seconds: float = POLL_FIRST_SECONDS,
        max_poll_seconds: float = POLL_MAX_SECONDS,
    ) -> None:
        """Start ``workers`` consumer threads per queue (``queues``: all by default); idle,
        they look at the queue every ``poll_seconds``, backing off to ``max_poll_seconds``,
        and at once when this process enqueues."""
        if workers <= 0 or self._consumers:
            return
        for name in self.select(queues):
            consumer = _QuietConsumer(
                self.hueys[name],
                wake=self._wakes[name],
                workers=workers,
                worker_type="thread",
                periodic=False,
                initial_delay=poll_seconds,
                max_delay=max_poll_seconds,
                check_worker_health=False,
            )
            consumer.start()
            self._consumers.append(consumer)
            log.info("job consumer started on queue %s with %d worker(s)", name, workers)

    def stop_consumer(self) -> None:
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            consumer.stop_flag.set()
            consumer.wake.set()  # an idle thread sees the stop now, not at its next look
            consumer.stop(graceful=True)

    def close(self) -> None:
        self.stop_consumer()
        for huey in self.hueys.values():
            close = getattr(huey.storage, "close", None)
            if callable(close):
                close()
