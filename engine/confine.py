"""Untrusted bytes are decoded in a child process whose limits the operating system enforces.

The checks of what a file declares (headers, end records, box sizes) are the cheap first
gate; they will always miss the next shape. What bounds the work *by construction* is
this module: the decoder (ffmpeg, Pillow, the zip and MP4 walkers) runs in a child
process with an address-space limit (``RLIMIT_AS``), a CPU-seconds limit (``RLIMIT_CPU``),
a written-file limit (``RLIMIT_FSIZE``), a wall-clock deadline (the parent kills it) and a
cap on what it may send back, and a bounded number run at once per process (a
:class:`Confiner`'s slots). A limit hit is a typed :class:`ConfinementError`, which the
caller turns into its own refusal for the member; a limit never takes the service down.

Two ways in:

- :meth:`Confiner.run_command`: an external program (ffmpeg). The limits are set by a tiny
  launcher (``python -I -S -c``) that then ``exec``s the program, so nothing runs between
  ``fork`` and ``exec`` in this (threaded) process.
- :meth:`Confiner.call`: a module-level Python function, run in a child forked from a
  ``forkserver`` (never from this process, which may hold torch's threads and locks). The
  child measures its own address space and allows ``memory_bytes`` on top of it.

On Linux the child also tries to leave the network (a new, empty network namespace, where
the kernel lets an unprivileged process make one); that is defence in depth: the decoders
are given one local file and open nothing else. ``RLIMIT_AS`` is not enforced by macOS; the
CPU, wall-clock and output bounds hold there too.

Blocking code: call it from a thread or a worker, never the event loop.

Exceptions::

    ConfinementError
     +-- OverMemory      the child ran out of its address space
     +-- OverTime        CPU seconds or the wall-clock deadline
     +-- OverOutput      it wrote or sent back more than allowed
     +-- ChildFailed     it crashed or exited non-zero (the decoder refused the bytes)
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from multiprocessing.connection import Connection
from typing import Any, TypeVar

MiB = 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """What one confined decode may cost."""

    memory_bytes: int = 384 * MiB  # address space on top of what the child starts with
    cpu_seconds: int = 20
    wall_seconds: float = 60.0
    output_bytes: int = 128 * MiB  # what it may write to stdout or send back
    file_bytes: int = 0  # what it may write to files (0: nothing)


@dataclass(frozen=True)
class Usage:
    """What one confined run cost, for benchmarks and metrics (peak RSS 0: not known)."""

    kind: str  # "call" or "command"
    outcome: str  # "ok", "refused" (the decoder said no), or a ConfinementError's limit
    peak_rss_bytes: int
    cpu_seconds: float
    wall_seconds: float


@dataclass
class _Cost:
    rss: int = 0
    cpu: float = 0.0


class ConfinementError(Exception):
    """A confined child hit a limit or failed; ``limit`` names which, for logs and metrics."""

    limit = "failed"


class OverMemory(ConfinementError):
    limit = "memory"


class OverTime(ConfinementError):
    limit = "time"


class OverOutput(ConfinementError):
    limit = "output"


class ChildFailed(ConfinementError):
    limit = "failed"

    def __init__(self, message: str, *, stderr: bytes = b"", returncode: int | None = None):
        super().__init__(message)
        self.stderr = stderr
        self.returncode = returncode


# The launcher of confined programs: set the limits, leave the network if allowed, exec.
_LAUNCHER = """
import os, resource, sys
mem, cpu, fsize = (int(x) for x in sys.argv[1:4])
if mem > 0 and sys.platform.startswith("linux"):
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
try:
    import ctypes
    unshare = ctypes.CDLL(None, use_errno=True).unshare
    if unshare(0x10000000 | 0x40000000) != 0:  # CLONE_NEWUSER | CLONE_NEWNET
        unshare(0x40000000)  # as root without user namespaces: CLONE_NEWNET alone
except Exception:
    pass
# glibc reserves 64 MB of address space for each thread's malloc arena: a program with a
# thread per stage (ffmpeg 7) would spend its address-space budget on reservations.
os.environ["MALLOC_ARENA_MAX"] = "2"
os.execv(sys.argv[4], sys.argv[4:])
"""
# What a launched program's own address space is before it decodes anything (a static
# ffmpeg maps about 60 MB of code and tables); added to the budget.
_PROGRAM_BASE_BYTES = 160 * MiB


_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


def leave_network() -> bool:
    """Move this (single-threaded) process into a new, empty network namespace.

    Through libc (``os.unshare`` is Python 3.12+): with a user namespace where the kernel
    lets an unprivileged process make one, else the network namespace alone (root). Whether
    it worked: where neither is allowed, the decoders still open nothing but their file.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        unshare = ctypes.CDLL(None, use_errno=True).unshare
        return bool(unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0 or unshare(_CLONE_NEWNET) == 0)
    except (OSError, AttributeError):
        return False


def _apply_limits(limits: Limits) -> None:
    """In a forked Python child: allow ``limits`` on top of what it already uses."""
    import resource

    if sys.platform.startswith("linux"):
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[0])
        current = pages * os.sysconf("SC_PAGE_SIZE")
        cap = current + limits.memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    used = time.process_time()
    cpu = int(used) + limits.cpu_seconds
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    leave_network()


def _child_main(
    conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...], limits: Limits
) -> None:
    """The confined side of :meth:`Confiner.call`: run ``fn`` and send back its outcome."""
    try:
        _apply_limits(limits)
        outcome: tuple[str, Any] = ("ok", fn(*args))
    except MemoryError:
        outcome = ("memory", None)
    except Exception as exc:  # sent back whole: the caller decides what is a refusal
        outcome = ("raised", exc)
    try:
        payload = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except MemoryError:
        payload = pickle.dumps(("memory", None))
    except Exception as exc:  # an exception that does not pickle: its type and text
        payload = pickle.dumps(("raised", RuntimeError(f"{type(exc).__name__}: {exc}")))
    if len(payload) > limits.output_bytes:
        payload = pickle.dumps(("output", len(payload)))
    conn.send_bytes(payload)
    conn.send_bytes(pickle.dumps(_self_usage()))
    conn.close()


def _self_usage() -> tuple[int, float]:
    """This process's peak RSS (bytes) and CPU seconds so far."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return int(ru.ru_maxrss * scale), float(ru.ru_utime + ru.ru_stime)


@cache
def _context() -> Any:
    """The forkserver context (``spawn`` where there is none): children never fork us."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # The decoders' modules, imported once by the server rather than by every child.
        ctx.set_forkserver_preload(["engine.confine", "engine.image.untrusted", "PIL.Image"])
    return ctx


class Confiner:
    """Runs decoders of untrusted bytes under OS limits, at most ``slots`` at once."""

    def __init__(self, slots: int = 2) -> None:
        self.slots = max(1, slots)
        self._gate = threading.BoundedSemaphore(self.slots)
        # Called with each run's Usage (bench/hostile.py, metrics); must not raise.
        self.observers: list[Callable[[Usage], None]] = []

    def _report(self, usage: Usage) -> None:
        for observe in list(self.observers):
            with contextlib.suppress(Exception):
                observe(usage)

    @contextlib.contextmanager
    def _slot(self, limits: Limits) -> Any:
        # Waiting for a slot counts toward the deadline: a queue of bombs must not
        # turn into an unbounded wait for the members behind them.
        if not self._gate.acquire(timeout=max(1.0, limits.wall_seconds)):
            raise OverTime("too many files are being checked at once; try again shortly")
        try:
            yield
        finally:
            self._gate.release()

    def run_command(self, argv: Sequence[str], limits: Limits) -> bytes:
        """Run ``argv`` confined; its stdout (at most ``limits.output_bytes``) on success.

        Raises :class:`ChildFailed` (with its stderr, clipped) on a non-zero exit.
        """
        memory = limits.memory_bytes + _PROGRAM_BASE_BYTES if limits.memory_bytes else 0
        cmd = [
            sys.executable,
            "-I",
            "-S",
            "-c",
            _LAUNCHER,
            str(memory),
            str(limits.cpu_seconds),
            str(limits.file_bytes),
            *argv,
        ]
        with self._slot(limits):
            started = time.monotonic()
            cost = _Cost()
            try:
                out = _run_confined(cmd, limits, cost)
            except ChildFailed:
                self._report(
                    Usage("command", "refused", cost.rss, cost.cpu, time.monotonic() - started)
                )
                raise
            except ConfinementError as exc:
                self._report(
                    Usage("command", exc.limit, cost.rss, cost.cpu, time.monotonic() - started)
                )
                raise
            self._report(Usage("command", "ok", cost.rss, cost.cpu, time.monotonic() - started))
            return out

    def call(self, fn: Callable[..., T], *args: Any, limits: Limits) -> T:
        """``fn(*args)`` in a confined child; its result, or the exception it raised.

        ``fn`` and its arguments and result must pickle (a module-level function of an
        importable module, not of the main script, which children do not import; plain
        data). An exception ``fn`` raises is raised here as it was (the caller's typed
        refusals pass through); running out of memory is :class:`OverMemory`.
        """
        with self._slot(limits):
            started = time.monotonic()
            cost = _Cost()
            try:
                value = _call_confined(fn, args, limits, cost)
            except ConfinementError as exc:
                outcome = "refused" if isinstance(exc, ChildFailed) else exc.limit
                self._report(Usage("call", outcome, cost.rss, cost.cpu, time.monotonic() - started))
                raise
            except Exception:
                self._report(
                    Usage("call", "refused", cost.rss, cost.cpu, time.monotonic() - started)
                )
                raise
            self._report(Usage("call", "ok", cost.rss, cost.cpu, time.monotonic() - started))
            return value


def _wait(proc: subprocess.Popen[bytes], deadline: float, cost: _Cost) -> int | None:
    """Reap ``proc`` by ``deadline`` with its resource usage (``None``: still running)."""
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            scale = 1 if sys.platform == "darwin" else 1024
            cost.rss = int(ru.ru_maxrss * scale)
            cost.cpu = float(ru.ru_utime + ru.ru_stime)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _run_confined(cmd: list[str], limits: Limits, cost: _Cost) -> bytes:
    deadline = time.monotonic() + limits.wall_seconds
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        close_fds=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out: list[bytes] = []
    err = bytearray()
    size = 0
    over: ConfinementError | None = None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, "out")
        sel.register(proc.stderr, selectors.EVENT_READ, "err")
        open_streams = 2
        while open_streams and over is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                over = OverTime(f"it took longer than {limits.wall_seconds:g} s")
                break
            for key, _ in sel.select(timeout=min(remaining, 1.0)):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                elif key.data == "out":
                    size += len(chunk)
                    if size > limits.output_bytes:
                        over = OverOutput(f"it produced more than {limits.output_bytes} bytes")
                        break
                    out.append(chunk)
                elif len(err) < 4096:
                    err += chunk[: 4096 - len(err)]
    if over is not None:
        _kill(proc)
        raise over
    try:
        returncode = _wait(proc, max(deadline, time.monotonic() + 0.1), cost)
        if returncode is None:
            _kill(proc)
            raise OverTime(f"it took longer than {limits.wall_seconds:g} s")
    finally:
        proc.stdout.close()
        proc.stderr.close()
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        raise OverTime(f"it needed more than {limits.cpu_seconds} s of CPU")
    if returncode == -signal.SIGXFSZ:
        raise OverOutput("it tried to write a file")
    if returncode != 0:
        text = bytes(err)
        if b"Cannot allocate memory" in text or b"out of memory" in text.lower():
            raise OverMemory("it needed more memory than allowed")
        raise ChildFailed(f"exit status {returncode}", stderr=text, returncode=returncode)
    return b"".join(out)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _lean_launch(popen: Any, process_obj: Any) -> None:
    """``popen_forkserver.Popen._launch`` (Python 3.11-3.13), less the parent's main module.

    multiprocessing has every child re-run the parent's main script (as ``__mp_main__``)
    so that functions defined there unpickle. A confined call's function is module-level
    elsewhere, and a program started as a script (``tada-bot``, ``tada-engine``,
    ``bench/hostile.py``) would otherwise import everything it imports again in every
    child: seconds a decode. (``set_forkserver_preload(["__main__"])`` does not help on
    Python 3.11: the server is never given the main path.)
    """
    import io
    from multiprocessing import forkserver, reduction, spawn, util
    from multiprocessing.context import set_spawning_popen

    prep_data = spawn.get_preparation_data(process_obj._name)
    prep_data.pop("init_main_from_path", None)
    prep_data.pop("init_main_from_name", None)
    buf = io.BytesIO()
    set_spawning_popen(popen)
    try:
        reduction.dump(prep_data, buf)
        reduction.dump(process_obj, buf)
    finally:
        set_spawning_popen(None)
    popen.sentinel, w = forkserver.connect_to_new_process(popen._fds)
    parent_w = os.dup(w)
    popen.finalizer = util.Finalize(popen, util.close_fds, (parent_w, popen.sentinel))  # type: ignore[attr-defined]
    with open(w, "wb", closefd=True) as f:
        f.write(buf.getbuffer())
    popen.pid = forkserver.read_signed(popen.sentinel)


# Python 3.14 may launch differently: it gets the stock Process (correct, only slower).
_LEAN = "forkserver" in multiprocessing.get_all_start_methods() and sys.version_info < (3, 14)
if _LEAN:
    from multiprocessing import popen_forkserver
    from multiprocessing.context import ForkServerProcess

    class _LeanPopen(popen_forkserver.Popen):
        def _launch(self, process_obj: Any) -> None:
            _lean_launch(self, process_obj)

    class _LeanProcess(ForkServerProcess):
        @staticmethod
        def _Popen(process_obj: Any) -> Any:
            return _LeanPopen(process_obj)


def _process_class() -> Any:
    """The context's Process; under forkserver, one whose child skips ``__main__``."""
    ctx = _context()
    return _LeanProcess if _LEAN and ctx.get_start_method() == "forkserver" else ctx.Process


def _call_confined(fn: Callable[..., T], args: tuple[Any, ...], limits: Limits, cost: _Cost) -> T:
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    child = _process_class()(target=_child_main, args=(sender, fn, args, limits), daemon=True)
    deadline = time.monotonic() + limits.wall_seconds
    child.start()
    sender.close()
    try:
        payload: bytes | None = None
        while payload is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OverTime(f"it took longer than {limits.wall_seconds:g} s")
            if receiver.poll(min(remaining, 0.5)):
                try:
                    # A pickled outcome is at most output_bytes plus its framing.
                    payload = receiver.recv_bytes(limits.output_bytes + 4096)
                except EOFError:
                    break
                except OSError as exc:
                    raise OverOutput("it sent back more than allowed") from exc
            elif not child.is_alive() and not receiver.poll(0):
                break
        if payload is None:
            child.join(5)
            code = child.exitcode
            if code in (-signal.SIGXCPU, -signal.SIGKILL):
                raise OverTime(f"it needed more than {limits.cpu_seconds} s of CPU")
            if code == -signal.SIGXFSZ:
                raise OverOutput("it tried to write a file")
            # A C library that cannot allocate may abort or crash rather than raise.
            raise ChildFailed(f"the decoder stopped (exit status {code})", returncode=code)
        status, value = pickle.loads(payload)
        if receiver.poll(min(5.0, max(0.1, deadline - time.monotonic()))):
            with contextlib.suppress(EOFError, OSError):
                cost.rss, cost.cpu = pickle.loads(receiver.recv_bytes(4096))
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join(5)
        with contextlib.suppress(ValueError):
            child.close()
    if status == "ok":
        return value  # type: ignore[no-any-return]
    if status == "memory":
        raise OverMemory("it needed more memory than allowed")
    if status == "output":
        raise OverOutput(f"its result ({value} bytes) is larger than allowed")
    raise value


@cache
def process_confiner() -> Confiner:
    """This process's confiner: the slots are per process, whoever decodes.

    Composition roots may build and pass their own; the module-level callers (checks that
    run in workers and in the bot alike) share this one, so that the per-process bound
    holds across them.
    """
    slots = int(os.environ.get("TADA_DECODE_SLOTS", "0") or 0) or min(4, os.cpu_count() or 2)
    return Confiner(slots)
