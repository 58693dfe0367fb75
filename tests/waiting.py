"""How tests wait: on the thing itself, never on a number of seconds a loaded machine outruns.

A test waits for what it needs (a job's state, the voice models' warm-up thread, a process's
``/healthz`` answer, a line it prints, a message in a channel). :data:`CEILING_S` only ends
a hang, so that a broken test fails instead of blocking the run: it is not a measure of how
long the work takes. On a quiet 2-core machine a voice clone with its models loading takes
about 20 s; beside other work 56 s was seen, and a fixed 30 s wait failed (issue 25).
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable, Iterator

# Ten minutes: far above anything a loaded machine takes, well below CI's own job limit.
CEILING_S = 600.0


def wait_until(
    ready: Callable[[], object], what: str, *, ceiling: float = CEILING_S, every: float = 0.05
) -> None:
    """Poll ``ready()`` until it is true; past ``ceiling`` seconds fail naming ``what``."""
    deadline = time.monotonic() + ceiling
    while not ready():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not after {ceiling:.0f} s (a hang, not a slow machine)")
        time.sleep(every)


async def async_wait_until(
    ready: Callable[[], object], what: str, *, ceiling: float = CEILING_S, every: float = 0.05
) -> None:
    """:func:`wait_until` for async tests: the event loop runs while it waits."""
    deadline = time.monotonic() + ceiling
    while not ready():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not after {ceiling:.0f} s (a hang, not a slow machine)")
        await asyncio.sleep(every)


def polls(ceiling: float = CEILING_S) -> Iterator[int]:
    """``for _ in polls():`` in place of ``for _ in range(N):`` around a check and a sleep:
    as many tries as come before ``ceiling`` seconds, not a count a slow machine runs out
    of. The loop then ends; the test's own assertion after it says what did not happen."""
    deadline = time.monotonic() + ceiling
    tries = 0
    while tries == 0 or time.monotonic() < deadline:
        yield tries
        tries += 1


def cpu_seconds(*, children_only: bool = False) -> float:
    """CPU seconds this process and its waited-for children have spent so far (with
    ``children_only``, those children's alone: the confined decoders).

    What a test that bounds the cost of some work compares, before and after: a loaded
    machine stretches the wall clock of the same work, never its CPU seconds."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = children.ru_utime + children.ru_stime
    if children_only:
        return spent
    own = resource.getrusage(resource.RUSAGE_SELF)
    return spent + own.ru_utime + own.ru_stime
