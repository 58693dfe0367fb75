"""Fair scheduling: a bounded number of jobs run at once, round-robin across members."""

from __future__ import annotations

from collections import OrderedDict, deque


class FairQueue:
    """Queued job ids per member, served in turn.

    A member with many queued jobs gets one slot per round, like everybody else, and at
    most ``per_member`` at once: one burst cannot starve the members who asked after it.
    Pure bookkeeping (no I/O, no awaiting), so positions are exact and cheap.
    """

    def __init__(self, *, max_running: int, per_member: int) -> None:
        self.max_running = max_running
        self.per_member = per_member
        self._queues: OrderedDict[int, deque[str]] = OrderedDict()
        self._running: dict[int, int] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def running(self) -> int:
        """How many jobs hold a slot."""
        return sum(self._running.values())

    def push(self, member: int, job_id: str) -> None:
        """Queue a job at the end of its member's line."""
        self._queues.setdefault(member, deque()).append(job_id)

    def pop(self) -> tuple[int, str] | None:
        """The next job to run and take its slot, or ``None`` (nothing queued, or no slot)."""
        if self.running >= self.max_running:
            return None
        for member in list(self._queues):
            if self._running.get(member, 0) >= self.per_member:
                continue
            line = self._queues.pop(member)
            job_id = line.popleft()
            if line:
                self._queues[member] = line  # back of the round
            self._running[member] = self._running.get(member, 0) + 1
            return member, job_id
        return None

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
        return True

    def position(self, job_id: str) -> int | None:
        """1 when the job runs next, 2 after one other, ...; ``None`` when not queued.

        Serving goes round by round: in each round every member with jobs left gives one,
        in the current order of members.
        """
        lines = [list(q) for q in self._queues.values()]
        ahead = 0
        for depth in range(max((len(line) for line in lines), default=0)):
            for line in lines:
                if depth >= len(line):
                    continue
                ahead += 1
                if line[depth] == job_id:
                    return ahead
        return None
