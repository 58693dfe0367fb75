"""Our engine started beside the bot: ``create_app(settings)`` under uvicorn on loopback,
as a task of the bot's own event loop.

Imports of ``engine`` and ``uvicorn`` happen here, lazily: a bot installed without the
``engine`` extra can still talk to the hosted API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn

    from engine.settings import EngineSettings

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"


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


class EmbeddedEngine:
    """Start with ``async with EmbeddedEngine(settings) as engine: engine.base_url``."""

    def __init__(self, settings: EngineSettings, *, port: int | None = None) -> None:
        # Every member reaches this engine through the bot on loopback: per-client rates
        # would count the whole server as one client (per-member limits still apply).
        limits = settings.limits.model_copy(
            update={"exempt_clients": [*settings.limits.exempt_clients, LOOPBACK]}
        )
        self.settings = settings.model_copy(update={"limits": limits})
        jobs = settings.jobs
        # Model work in a child process: in the bot's process it would hold the event loop
        # (and the GIL) while members wait for their interactions to be acknowledged.
        self.worker_threads = jobs.in_process_workers if jobs.embedded_worker_process else 0
        if self.worker_threads:
            api_only = jobs.model_copy(update={"in_process_workers": 0})
            self.settings = self.settings.model_copy(update={"jobs": api_only})
        self._child_settings = settings
        self._worker: asyncio.subprocess.Process | None = None
        self.port = settings.port if port is None else port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.base_url = ""

    def __repr__(self) -> str:
        return f"<EmbeddedEngine {self.base_url or 'stopped'}>"

    async def start(self) -> str:
        """Serve the engine app and wait until it accepts connections; returns its URL."""
        try:
            import uvicorn

            from engine.app import create_app
        except ImportError as exc:
            raise EngineStartError(
                "tada.base_url = 'embedded' needs the engine installed: "
                "pip install -e '.[engine,ml]' (or set tada.base_url to a Ta-da API URL)"
            ) from exc
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
        log.info("embedded Ta-da engine at %s (data in %s)", self.base_url, self.settings.data_dir)
        if self.worker_threads:
            await self._start_worker()
        return self.base_url

    async def _start_worker(self) -> None:
        """``tada-engine worker`` as a child, with these settings (the API migrated first)."""
        from engine.cli import PARENT_PID_ENV
        from engine.settings import SETTINGS_ENV, settings_for_child

        env = {
            **os.environ,
            SETTINGS_ENV: settings_for_child(self._child_settings),
            PARENT_PID_ENV: str(os.getpid()),
        }
        argv = ["-m", "engine", "worker", "--workers", str(self.worker_threads)]
        self._worker = await asyncio.create_subprocess_exec(sys.executable, *argv, env=env)
        log.info(
            "embedded engine's job worker: process %d, %d thread(s)",
            self._worker.pid,
            self.worker_threads,
        )

    async def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None or worker.returncode is not None:
            return
        worker.terminate()  # the worker finishes its current step and re-queues the rest
        try:
            await asyncio.wait_for(worker.wait(), timeout=30)
        except TimeoutError:
            log.warning("embedded engine's worker slow to stop; killing it")
            worker.kill()
            await worker.wait()

    async def stop(self) -> None:
        """Finish in-flight requests, run the app's shutdown (workers, database), stop."""
        await self._stop_worker()
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=30)
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
