"""Fair scheduling: a bounded number of jobs run at once, round-robin across members.

:class:`FairQueue` is the rule on one process's memory; :func:`fair_order` applies the
same rule to the shared queue the store holds (:class:`~bot.jobs.store.QueueSnapshot`),
which is what the runner uses, so that every bot process serves the same order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from datetime import datetime


def fair_order(
    waiting: Iterable[tuple[int, str]],
    running: dict[int, int],
    served: dict[int, datetime],
) -> list[tuple[int, str]]:
    """The order ``waiting`` jobs (member, job id; oldest first) are served in.

    Each turn goes to the member with the fewest jobs running, then the one served
    longest ago (never served first), then the earliest to arrive; each job handed out
    counts as running for the turns after it (as :meth:`FairQueue.position` replays).
    """
    lines: dict[int, list[str]] = {}
    for member, job_id in waiting:
        lines.setdefault(member, []).append(job_id)
    arrived = {member: n for n, member in enumerate(lines)}
    # Served times as ranks: later turns in this replay rank after every real one.
    ranks = {m: n for n, m in enumerate(sorted(served, key=lambda m: served[m]))}
    busy = dict(running)
    tick = len(ranks)
    order: list[tuple[int, str]] = []
    while lines:
        member = min(lines, key=lambda m: (busy.get(m, 0), ranks.get(m, -1), arrived[m]))
        order.append((member, lines[member].pop(0)))
        if not lines[member]:
            del lines[member]
        busy[member] = busy.get(member, 0) + 1
        ranks[member] = tick
        tick += 1
    return order


class FairQueue:
    """Queued job ids per member, served fairly.

    The next job is the first queued job of the member with the fewest jobs running, and
    among those the one served longest ago (a member never served comes first, then by
    arrival). A member's burst therefore takes one turn per round like everybody else's
    requests, and at most ``per_member`` slots at once: it cannot starve the members who
    asked after it. Pure bookkeeping (no I/O), so positions are exact and cheap.
    """

    def __init__(self, *, max_running: int, per_member: int) -> None:
        self.max_running = max_running
        self.per_member = per_member
        self._queues: dict[int, deque[str]] = {}
        self._running: dict[int, int] = {}
        self._served: dict[int, int] = {}
        self._arrived: dict[int, int] = {}
        self._seq = 0

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def running(self) -> int:
        """How many jobs hold a slot."""
        return sum(self._running.values())

    def _tick(self) -> int:
        self._seq += 1
        return self._seq

    def push(self, member: int, job_id: str) -> None:
        """Queue a job at the end of its member's line."""
        if member not in self._queues:
            self._queues[member] = deque()
            self._arrived[member] = self._tick()
        self._queues[member].append(job_id)

    def _order(self, member: int, running: dict[int, int]) -> tuple[int, int, int]:
        return (running.get(member, 0), self._served.get(member, -1), self._arrived[member])

    def pop(self) -> tuple[int, str] | None:
        """The next job to run and take its slot, or ``None`` (nothing queued, or no slot)."""
        if self.running >= self.max_running:
            return None
        ready = [m for m in self._queues if self._running.get(m, 0) < self.per_member]
        if not ready:
            return None
        member = min(ready, key=lambda m: self._order(m, self._running))
        line = self._queues[member]
        job_id = line.popleft()
        if not line:
            del self._queues[member]
            del self._arrived[member]
        self._running[member] = self._running.get(member, 0) + 1
        self._served[member] = self._tick()
        return member, job_id

    def release(self, member: int) -> None:
        """A job of ``member`` gave its slot back."""
        left = self._running.get(member, 0) - 1
        if left > 0:
            self._running[member] = left
        else:
            self._running.pop(member, None)

    def remove(self, member: int, job_id: str) -> bool:
        """Drop a queued job (cancelled, member forgotten); ``True`` if it was queued."""
        line = self._queues.get(member)
        if line is None or job_id not in line:
            return False
        line.remove(job_id)
        if not line:
            del self._queues[member]
            del self._arrived[member]
        return True

    def position(self, job_id: str) -> int | None:
        """1 when the job runs next, 2 after one other, ...; ``None`` when not queued.

        The serving order is replayed on copies, counting each job handed out as running
        (slots free up in an unknown order, so this is the order, not a time).
        """
        if not any(job_id in line for line in self._queues.values()):
            return None
        lines = {m: list(q) for m, q in self._queues.items()}
        running = dict(self._running)
        served = dict(self._served)
        seq = self._seq
        ahead = 0
        while lines:
            member = min(
                lines,
                key=lambda m: (running.get(m, 0), served.get(m, -1), self._arrived[m]),
            )
            picked = lines[member].pop(0)
            if not lines[member]:
                del lines[member]
            ahead += 1
            if picked == job_id:
                return ahead
            running[member] = running.get(member, 0) + 1
            seq += 1
            served[member] = seq
        return None
