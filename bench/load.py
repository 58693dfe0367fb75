"""Benchmark: the engine's request path under 10, 100 and 500 connections, measured with wrk
beside bare FastAPI baselines served the same way, in the same run.

The load generator is wrk (C, epoll; Debian's ``wrk`` package, installed by this script's
set-up when missing and run as root, else it says how): one wrk thread drives far more
requests than the servers here answer, so the figures describe the servers, not the client.

Servers, each ``uvicorn`` in its own process with the same options (one worker unless
``--workers``), started one at a time so they never compete:

- ``bare``: FastAPI ``return {}``, the framework's ceiling;
- ``orm``: FastAPI + SQLAlchemy async (aiosqlite), one row read per request;
- ``engine``: ``tada-engine serve`` on a SQLite data dir with members, uploads and a voice.

Route classes on the engine: ``auth`` (GET /api/voices of a member with none: the key check
and an empty list), ``list`` (GET /api/voices/uploads, 10 rows), ``artifact`` (a signed
GET of a stored file), ``register`` (POST /api/users/register, a new email each request).
For each cell: rps, p50, p99, non-2xx, socket errors and the server's CPU milliseconds per
request (psutil, the server's own process tree). Ratios: engine rps / bare rps, same
connections. Scaling: ``serve`` with one API process and then two, back to back on the same
database, the metadata reads at 100 connections (``--no-scaling`` skips it). The engine runs
with ``access_log = false``, as the baselines run with ``--no-access-log``.

    python bench/load.py [--seconds 10] [--levels 10,100,500] [--workers 1] [--no-scaling]

Writes bench/results/load.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

BARE_APP = """
from fastapi import FastAPI
app = FastAPI()

@app.get("/")
async def root() -> dict:
    return {}
"""

ORM_APP = """
import os
from fastapi import FastAPI
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

class Base(DeclarativeBase):
    pass

class Row(Base):
    __tablename__ = "rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))

engine = create_async_engine("sqlite+aiosqlite:///" + os.environ["BENCH_DB"])
sessions = async_sessionmaker(engine, expire_on_commit=False)
app = FastAPI()

@app.on_event("startup")
async def startup() -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with sessions.begin() as s:
        if await s.get(Row, 1) is None:
            s.add(Row(id=1, name="one"))

@app.get("/")
async def root() -> dict:
    async with sessions() as s:
        row = await s.scalar(select(Row).where(Row.id == 1))
        return {"id": row.id, "name": row.name}
"""

REGISTER_LUA = """
-- A new address per request: the prefix (one per cell, from the command line) and a count.
counter = 0
init = function(args)
  prefix = args[1]
end
request = function()
  counter = counter + 1
  local email = prefix .. "-" .. counter .. "@example.com"
  return wrk.format("POST", "/api/users/register?email=" .. email)
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"],
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit("bench/load.py needs wrk: apt-get install wrk (or brew install wrk)")


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


class Server:
    """A server process on a free loopback port; CPU time read from its process tree."""

    def __init__(self, argv: list[str], env: dict[str, str], probe: str) -> None:
        self.port = free_port()
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_ready(self.base + probe)

    def cpu_seconds(self) -> float:
        total = 0.0
        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until the server is idle (start-up work done: the device probe, imports)."""
        deadline = time.monotonic() + timeout
        before = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.cpu_seconds()
            if now - before < 0.05:
                return
            before = now

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def uvicorn_argv(app: str, workers: int, app_dir: Path) -> list[str]:
    argv = [sys.executable, "-m", "uvicorn", app, "--app-dir", str(app_dir)]
    argv += ["--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning"]
    argv += ["--no-access-log", "--timeout-keep-alive", "75"]
    return argv + (["--workers", str(workers)] if workers > 1 else [])


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    return round(float(m.group(1)) * _UNITS[m.group(2)], 2) if m else 0.0


def run_wrk(
    wrk: str,
    url: str,
    connections: int,
    seconds: float,
    headers: dict[str, str],
    script: Path | None,
) -> dict[str, float]:
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    if script is not None:
        argv += ["-s", str(script)]
    extra = ["--", f"c{connections}-{time.time_ns()}"] if script is not None else []
    out = subprocess.run([*argv, url, *extra], capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = {"requests": 0, "rps": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}
    if m := re.search(r"(\d+) requests in", out):
        result["requests"] = int(m.group(1))
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        result["rps"] = float(m.group(1))
    if m := re.search(r"\s50%\s+(\S+)", out):
        result["p50_ms"] = _ms(m.group(1))
    if m := re.search(r"\s99%\s+(\S+)", out):
        result["p99_ms"] = _ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = sum(int(g) for g in m.groups()) if m else 0
    return result


def measure(
    wrk: str,
    server: Server,
    path: str,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    script: Path | None = None,
) -> dict[str, float]:
    before = server.cpu_seconds()
    cell = run_wrk(wrk, server.base + path, connections, seconds, headers or {}, script)
    cpu = server.cpu_seconds() - before
    cell["server_cpu_ms_per_request"] = (
        round(cpu * 1000 / cell["requests"], 3) if cell["requests"] else 0.0
    )
    return cell


def engine_config(data: Path, workers: int) -> Path:
    config = data / "config.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [engine]
            data_dir = "{data / "engine"}"

            # As the baselines run (--no-access-log): the same work per request outside the app.
            access_log = false

            [engine.jobs]
            in_process_workers = 1

            [engine.voice]
            # No model warm-up competing with the first cells (no voice work is measured).
            preload = false

            [engine.limits]
            # The load generator is one loopback client: rates would measure the limiter.
            exempt_clients = ["127.0.0.1"]
            max_pending_uploads = 1000
            """
        )
    )
    del workers
    return config


def seed_engine(base: str) -> dict[str, str]:
    """A member with 10 voice uploads and an artifact URL; another with nothing."""
    with httpx.Client(base_url=base, timeout=60) as c:
        empty = c.post("/api/users/register", params={"email": "empty@example.com"}).json()
        full = c.post("/api/users/register", params={"email": "full@example.com"}).json()
        h = {"X-API-Key": full["api_key"]}
        for n in range(10):
            c.post(
                "/api/voices/uploads/url",
                params={"name": f"sample {n}", "file_name": "s.wav"},
                headers=h,
            ).raise_for_status()
    return {"empty_key": empty["api_key"], "key": full["api_key"]}


def artifact_path(data: Path, base: str) -> str:
    """Store an artifact directly and sign its URL with the engine's own services."""
    sys.path.insert(0, str(ROOT))
    from engine.services import build_services
    from engine.settings import load_engine_settings

    settings = load_engine_settings(data / "config.toml", environ={})
    services = build_services(settings, handlers={})
    services.storage.write_artifact("bench/a.json", b"{}")
    url = services.artifact_url(base + "/", "bench/a.json")
    services.queue.close()
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def engine_server(config: Path, workers: int) -> Server:
    argv = [sys.executable, "-m", "engine", "--config", str(config), "serve"]
    argv += ["--host", "127.0.0.1", "--port", "{port}"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    return Server(argv, {}, "/healthz")


def measure_scaling(
    wrk: str, config: Path, seeded: dict[str, str], seconds: float, connections: int = 100
) -> dict[str, object]:
    """``serve`` with one API process, then two, back to back on the same database: the
    metadata reads at ``connections``, and the rps ratio of two processes to one."""
    routes = {
        "auth": ("/api/voices", seeded["empty_key"]),
        "list": ("/api/voices/uploads", seeded["key"]),
    }
    cells: dict[str, dict[str, dict[str, float]]] = {}
    for n in (1, 2):
        server = engine_server(config, n)
        try:
            server.settle()
            cells[f"workers_{n}"] = {
                route: measure(wrk, server, path, connections, seconds, {"X-API-Key": key})
                for route, (path, key) in routes.items()
            }
        finally:
            server.stop()
    one, two = cells["workers_1"], cells["workers_2"]
    ratio = {r: round(two[r]["rps"] / one[r]["rps"], 3) if one[r]["rps"] else 0.0 for r in routes}
    return {"connections": connections, **cells, "ratio_2_to_1_rps": ratio}


def run(levels: list[int], seconds: float, workers: int, scaling: bool) -> dict[str, object]:
    wrk = ensure_wrk()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="tada-load-") as tmp:
        work = Path(tmp)
        (work / "bare_app.py").write_text(BARE_APP)
        (work / "orm_app.py").write_text(ORM_APP)
        lua = work / "register.lua"
        lua.write_text(REGISTER_LUA)
        env = {"BENCH_DB": str(work / "orm.sqlite3")}
        for name, app in (("bare", "bare_app:app"), ("orm", "orm_app:app")):
            server = Server(uvicorn_argv(app, workers, work), env, "/")
            try:
                results[name] = {str(c): measure(wrk, server, "/", c, seconds) for c in levels}
            finally:
                server.stop()
            print(name, json.dumps(results[name]), flush=True)
        config = engine_config(work, workers)
        server = engine_server(config, workers)
        try:
            seeded = seed_engine(server.base)
            art = artifact_path(work, server.base)
            server.settle()
            routes = {
                "auth": ("/api/voices", {"X-API-Key": seeded["empty_key"]}, None),
                "list": ("/api/voices/uploads", {"X-API-Key": seeded["key"]}, None),
                "artifact": (art, {}, None),
                "register": ("/api/users/register", {}, lua),
            }
            engine: dict[str, dict[str, object]] = {}
            for route, (path, headers, script) in routes.items():
                engine[route] = {
                    str(c): measure(wrk, server, path, c, seconds, headers, script) for c in levels
                }
                print("engine", route, json.dumps(engine[route]), flush=True)
            results["engine"] = engine
        finally:
            server.stop()
        if scaling:
            results["scaling"] = measure_scaling(wrk, config, seeded, seconds)
            print("scaling", json.dumps(results["scaling"]), flush=True)
    bare = results["bare"]
    assert isinstance(bare, dict)
    ratios: dict[str, dict[str, float]] = {}
    for route, cells in results["engine"].items():  # type: ignore[union-attr,attr-defined]
        ratios[route] = {
            c: round(cell["rps"] / bare[c]["rps"], 3) if bare[c]["rps"] else 0.0
            for c, cell in cells.items()
        }
    results["ratio_engine_to_bare_rps"] = ratios
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="10,100,500")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "load.json")
    parser.add_argument(
        "--no-scaling", action="store_true", help="skip serve --workers 1 vs 2 at 100 connections"
    )
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    loadavg_at_start = os.getloadavg()
    results = run(levels, args.seconds, args.workers, not args.no_scaling)
    report = {
        "bench": "load",
        "generator": "wrk -t1 (one C thread; the servers saturate first)",
        "levels": levels,
        "seconds_per_cell": args.seconds,
        "uvicorn_workers": args.workers,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            # Others' work on a shared machine shows here; the ratios are within one run.
            "loadavg_at_start": loadavg_at_start,
            "loadavg_at_end": os.getloadavg(),
        },
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
