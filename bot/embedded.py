"""Our engine started beside the bot, on loopback.

By default (``[engine] embedded_child_process = true``) it is a child process,
``tada-engine serve`` with these settings: its API and its models' work never hold the
bot's event loop, and it stops with the bot (also when the bot is killed). Otherwise it is
``create_app(settings)`` under uvicorn as a task of the bot's own event loop.

Imports of ``engine`` and ``uvicorn`` happen here, lazily: a bot installed without the
``engine`` extra can still talk to the hosted API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn

    from engine.settings import EngineSettings

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0


class EngineStartError(RuntimeError):
    """The embedded engine did not start; the message says why."""


def _quiet_server(config: uvicorn.Config) -> uvicorn.Server:
    import uvicorn

    class _Server(uvicorn.Server):
        # The bot owns the process's signals; uvicorn must not capture (and re-raise) them.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return _Server(config)


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


async def _healthy(port: int) -> bool:
    """``GET /healthz`` answered 200 (a bare request: no client, nothing logged)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), 2.0)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 2.0)
        return status.split(b" ")[1:2] == [b"200"]
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class EmbeddedEngine:
    """Start with ``async with EmbeddedEngine(settings) as engine: engine.base_url``."""

    def __init__(self, settings: EngineSettings, *, port: int | None = None) -> None:
        # Every member reaches this engine through the bot on loopback: per-client rates
        # would count the whole server as one client (per-member limits still apply).
        limits = settings.limits.model_copy(
            update={"exempt_clients": [*settings.limits.exempt_clients, LOOPBACK]}
        )
        self.settings = settings.model_copy(update={"limits": limits, "host": LOOPBACK})
        self.port = settings.port if port is None else port
        self.child_process = settings.embedded_child_process
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._child: asyncio.subprocess.Process | None = None
        self.base_url = ""

    def __repr__(self) -> str:
        return f"<EmbeddedEngine {self.base_url or 'stopped'}>"

    async def start(self) -> str:
        """Start the engine and wait until it accepts connections; returns its URL."""
        try:
            import uvicorn  # noqa: F401

            from engine.app import create_app  # noqa: F401
        except ImportError as exc:
            raise EngineStartError(
                "tada.base_url = 'embedded' needs the engine installed: "
                "pip install -e '.[engine,ml]' (or set tada.base_url to a Ta-da API URL)"
            ) from exc
        if self.child_process:
            await self._start_child()
        else:
            await self._start_in_loop()
        log.info("embedded Ta-da engine at %s (data in %s)", self.base_url, self.settings.data_dir)
        return self.base_url

    # ------------------------------------------------------------------ child process

    async def _start_child(self) -> None:
        from engine.cli import PARENT_PID_ENV
        from engine.settings import SETTINGS_ENV, settings_for_child

        port = self.port or _free_port()
        if not _port_is_free(port):
            raise EngineStartError(
                f"the embedded engine could not listen on {LOOPBACK}:{port} "
                "(port in use? change engine.port in config.toml)"
            )
        env = {
            **os.environ,
            SETTINGS_ENV: settings_for_child(self.settings),
            PARENT_PID_ENV: str(os.getpid()),
        }
        argv = ["-m", "engine", "serve", "--host", LOOPBACK, "--port", str(port)]
        self._child = await asyncio.create_subprocess_exec(sys.executable, *argv, env=env)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not await _healthy(port):
            if self._child.returncode is not None:
                self._child = None
                raise EngineStartError(
                    "the embedded engine stopped during start-up; see the log above"
                )
            if time.monotonic() > deadline:
                await self._stop_child()
                raise EngineStartError(
                    f"the embedded engine did not answer within {START_TIMEOUT_SECONDS:g} s"
                )
            await asyncio.sleep(0.1)
        self.base_url = f"http://{LOOPBACK}:{port}"

    async def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is None or child.returncode is not None:
            return
        child.terminate()  # uvicorn finishes requests in flight; workers re-queue their jobs
        try:
            await asyncio.wait_for(child.wait(), timeout=STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning("embedded engine slow to stop; killing it")
            child.kill()
            await child.wait()

    # ------------------------------------------------------------------ in this loop

    async def _start_in_loop(self) -> None:
        import uvicorn

        from engine.app import create_app

        app = create_app(self.settings)
        config = uvicorn.Config(
            app,
            host=LOOPBACK,
            port=self.port,
            lifespan="on",
            log_config=None,
            access_log=False,
            log_level="warning",
            # Longer than the bot's client keeps idle connections (httpx: 5 s): at equal
            # timeouts a call sent as uvicorn closed the idle connection was lost.
            timeout_keep_alive=75,
            # Only the bot talks to it, over loopback: no proxy's headers to believe.
            proxy_headers=False,
        )
        server = self._server = _quiet_server(config)

        async def serve() -> None:
            try:
                await server.serve()
            except SystemExit as exc:  # uvicorn exits when it cannot bind; keep the loop alive
                raise EngineStartError(
                    f"the embedded engine could not listen on {LOOPBACK}:{self.port} "
                    "(port in use? change engine.port in config.toml)"
                ) from exc

        self._task = asyncio.create_task(serve(), name="embedded-engine")
        while not server.started:
            if self._task.done():
                self._task.result()  # raises EngineStartError if serve() failed
                raise EngineStartError("the embedded engine stopped during start-up; see the log")
            await asyncio.sleep(0.02)
        sockets = [sock for srv in server.servers for sock in (srv.sockets or ())]
        port = sockets[0].getsockname()[1] if sockets else self.port
        self.base_url = f"http://{LOOPBACK}:{port}"

    async def stop(self) -> None:
        """Finish in-flight requests, run the engine's shutdown (workers, database), stop."""
        try:
            await self._stop_child()
            if self._server is None or self._task is None:
                return
            self._server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                log.warning("embedded engine slow to stop; forcing it")
                self._server.force_exit = True
                await self._task
        finally:
            self._server = None
            self._task = None
            self.base_url = ""

    async def __aenter__(self) -> EmbeddedEngine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
