"""The job runner: members' Ta-da work as job rows, run fairly, posted where it was asked.

- :mod:`bot.jobs.models`: kinds, states, destinations, the :class:`Job` view of a row;
- :mod:`bot.jobs.store`: the rows (``bot_jobs``);
- :mod:`bot.jobs.fairness`: the bounded, round-robin queue;
- :mod:`bot.jobs.runner`: submit, run, watch trainings, post results, recover at start;
- :mod:`bot.jobs.render`: what results look like on Discord;
- :mod:`bot.jobs.buttons`: the persistent buttons on results.
"""

from bot.jobs.models import Destination, Job, JobKind, JobState
from bot.jobs.runner import JobRequest, JobRunner
from bot.jobs.store import JobNotFound, JobStore

__all__ = [
    "Destination",
    "Job",
    "JobKind",
    "JobNotFound",
    "JobRequest",
    "JobRunner",
    "JobState",
    "JobStore",
]
