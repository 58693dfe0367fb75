"""engine/confine.py: the OS, not an estimate, bounds what a confined decoder may cost."""

from __future__ import annotations

import sys
import time

import pytest

from engine.confine import (
    ChildFailed,
    Confiner,
    Limits,
    OverMemory,
    OverOutput,
    OverTime,
)

pytestmark = pytest.mark.no_database
MiB = 1024 * 1024


class Refusal(ValueError):
    """A typed refusal raised in the child; it must arrive as itself."""


def _allocate(n_bytes: int) -> int:
    block = bytearray(n_bytes)
    block[-1] = 1
    return len(block)


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def _refuse(reason: str) -> None:
    raise Refusal(reason)


def _big_result(n_bytes: int) -> bytes:
    return b"x" * n_bytes


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def test_a_call_returns_its_result_and_passes_typed_refusals_through() -> None:
    confiner = Confiner(slots=1)
    assert confiner.call(_allocate, 10 * MiB, limits=Limits()) == 10 * MiB
    with pytest.raises(Refusal, match="not an image"):
        confiner.call(_refuse, "not an image", limits=Limits())


def test_memory_past_the_budget_is_refused_not_granted() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_AS is enforced on Linux only")
    with pytest.raises(OverMemory):
        Confiner(1).call(_allocate, 600 * MiB, limits=Limits(memory_bytes=256 * MiB))


def test_cpu_past_the_budget_is_stopped_by_the_kernel() -> None:
    started = time.monotonic()
    with pytest.raises(OverTime):
        Confiner(1).call(_spin, 30.0, limits=Limits(cpu_seconds=1, wall_seconds=60))
    assert time.monotonic() - started < 20


def test_wall_clock_past_the_deadline_is_killed() -> None:
    started = time.monotonic()
    with pytest.raises(OverTime):
        Confiner(1).call(_sleep, 30.0, limits=Limits(wall_seconds=1.5))
    assert time.monotonic() - started < 10


def test_a_result_past_the_output_cap_is_refused() -> None:
    with pytest.raises(OverOutput):
        Confiner(1).call(_big_result, 8 * MiB, limits=Limits(output_bytes=1 * MiB))


def test_a_program_is_confined_too() -> None:
    confiner = Confiner(1)
    python = sys.executable
    assert confiner.run_command([python, "-c", "print('hi')"], Limits()) == b"hi\n"
    with pytest.raises(OverOutput):
        confiner.run_command(
            [python, "-c", "import sys; sys.stdout.write('x' * 4_000_000)"],
            Limits(output_bytes=1 * MiB),
        )
    with pytest.raises(OverTime):
        confiner.run_command(
            [python, "-c", "while True: pass"], Limits(cpu_seconds=1, wall_seconds=30)
        )
    with pytest.raises(ChildFailed) as failed:
        confiner.run_command([python, "-c", "import sys; sys.exit(3)"], Limits())
    assert failed.value.returncode == 3
    if sys.platform.startswith("linux"):
        # The program's address space is capped: a 1 GB allocation fails inside it.
        with pytest.raises(ChildFailed):
            confiner.run_command(
                [python, "-c", "bytearray(1 << 30)"], Limits(memory_bytes=128 * MiB)
            )


def test_slots_bound_how_many_run_at_once() -> None:
    import threading

    confiner = Confiner(slots=1)
    started = time.monotonic()
    threads = [
        threading.Thread(target=confiner.call, args=(_sleep, 1.0), kwargs={"limits": Limits()})
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One slot: the two one-second children ran one after the other.
    assert time.monotonic() - started >= 2.0


def test_each_run_reports_what_it_cost() -> None:
    confiner = Confiner(1)
    seen: list[object] = []
    confiner.observers.append(seen.append)
    confiner.call(_allocate, 64 * MiB, limits=Limits())
    confiner.run_command([sys.executable, "-c", "bytearray(48 << 20)"], Limits())
    with pytest.raises(OverTime):
        confiner.call(_spin, 30.0, limits=Limits(cpu_seconds=1))
    call, command, spun = seen
    assert call.kind == "call" and call.outcome == "ok"  # type: ignore[attr-defined]
    assert call.peak_rss_bytes > 64 * MiB  # type: ignore[attr-defined]
    assert command.kind == "command" and command.peak_rss_bytes > 48 * MiB  # type: ignore[attr-defined]
    assert spun.outcome == "time"  # type: ignore[attr-defined]


def _connect(port: int) -> str:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return "connected"
    except OSError as exc:
        return f"refused: {exc}"


def test_a_confined_child_has_no_network_where_the_kernel_allows_it() -> None:
    import socket
    import subprocess

    probe = subprocess.run(
        [sys.executable, "-c", "from engine.confine import leave_network; print(leave_network())"],
        capture_output=True,
        text=True,
        check=True,
    )
    if probe.stdout.strip() != "True":
        pytest.skip("this kernel allows no network namespace here")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert _connect(port) == "connected"  # the parent reaches it
        got = Confiner(1).call(_connect, port, limits=Limits())
        assert got.startswith("refused"), got
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
        with pytest.raises(ChildFailed):
            Confiner(1).run_command([sys.executable, "-c", code], Limits())
