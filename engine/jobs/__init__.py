"""The job system: database rows are the truth, huey only carries job ids.

- :class:`JobQueue` wraps a huey instance (SQLite file by default, Redis at scale).
- :class:`JobWorker` claims and runs jobs with registered handlers (blocking code, threads).
- :class:`JobService` is the async face the API uses: submit, read, wait, cancel.
"""

from engine.jobs.queue import QUEUES, JobQueue, UnknownQueue, build_huey, build_hueys, queue_of
from engine.jobs.service import JobService, JobTimeout, TooManyPendingJobs, submit_and_wait
from engine.jobs.worker import Handler, JobContext, JobFailed, JobWorker

__all__ = [
    "QUEUES",
    "Handler",
    "JobContext",
    "JobFailed",
    "JobQueue",
    "JobService",
    "JobTimeout",
    "JobWorker",
    "TooManyPendingJobs",
    "UnknownQueue",
    "build_huey",
    "build_hueys",
    "queue_of",
    "submit_and_wait",
]
