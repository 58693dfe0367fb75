"""The job runner: members' Ta-da work as job rows, run fairly, posted where it was asked.

- :mod:`bot.jobs.models`: kinds, states, destinations, the :class:`Job` view of a row;
- :mod:`bot.jobs.store`: the rows (``bot_jobs``);
- :mod:`bot.jobs.fairness`: the bounded, round-robin queue;
- :mod:`bot.jobs.runner`: submit and queue, resume at start; wires the roles below:
- :mod:`bot.jobs.execute`, :mod:`bot.jobs.trainings`, :mod:`bot.jobs.deliver`,
  :mod:`bot.jobs.recover`: run the Ta-da call, watch trainings, post results, recover;
- :mod:`bot.jobs.deps`: what the runner needs (``JobServices``) and buttons ask of it;
- :mod:`bot.jobs.render`: what results look like on Discord;
- :mod:`bot.jobs.buttons`: the persistent buttons on results;
- :mod:`bot.jobs.panel`: ``/jobs``, a member's queue and recent results.
"""

from bot.jobs.models import Destination, Job, JobKind, JobState
from bot.jobs.runner import JobRequest, JobRunner
from bot.jobs.store import JobNotFound, JobStore, ShardScope

__all__ = [
    "Destination",
    "Job",
    "JobKind",
    "JobNotFound",
    "JobRequest",
    "JobRunner",
    "JobState",
    "JobStore",
    "ShardScope",
]
