"""Benchmark: the engine under 10, 100 and 500 concurrent clients on loopback.

A real ``tada-engine serve`` (uvicorn, in-process job workers, the tiny image model) is
started on a free loopback port. Setup registers members and trains one LoRA each through
the API. Then, for each level, that many clients run at once:

- metadata: each client sends ``--reads`` GETs, cycling through the list and detail
  endpoints a member's bot would poll (voices, uploads, trainings, one training,
  generations);
- generation: each client sends one ``POST /api/loras/{id}/generations`` and waits for its
  image (the contract is synchronous; the engine's job workers draw them in turn).

For each phase: requests, answers by class, 5xx, lost requests (no answer at all:
connection errors, timeouts), throughput, p50/p99 latency. Afterwards the engine's own
generation count is compared with the 200 answers (nothing lost, nothing doubled).
Writes bench/results/load.json.

    python bench/load.py [--levels 10,100,500] [--reads 20] [--workers 2]

Client and server share this machine's cores, so the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MEMBERS = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def training_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(4):
            img = Image.new("RGB", (48, 48), (200 - 30 * i, 80, 40 + 40 * i))
            ImageDraw.Draw(img).ellipse((8, 8, 40, 40), fill=(30, 60 + 30 * i, 220))
            out = io.BytesIO()
            img.save(out, format="PNG")
            zf.writestr(f"img{i}.png", out.getvalue())
    return buf.getvalue()


def write_config(data: Path, workers: int) -> Path:
    config = data / "config.toml"
    config.write_text(
        f"""
[engine]
data_dir = "{data / "engine"}"

[engine.jobs]
in_process_workers = {workers}
wait_timeout_seconds = 900

[engine.image.training]
steps = 4
rank = 4
batch_size = 2
learning_rate = 0.01

[engine.image.zip]
min_side = 32

[engine.image.generation]
steps = 1
"""
    )
    return config


@dataclass
class Phase:
    """The outcome of one phase at one concurrency level."""

    name: str
    clients: int
    requests: int = 0
    ok: int = 0
    status_4xx: int = 0
    status_5xx: int = 0
    lost: int = 0
    seconds: float = 0.0
    throughput_rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors: list[str] = field(default_factory=list)

    def finish(self, latencies: list[float], seconds: float) -> None:
        self.seconds = round(seconds, 3)
        self.throughput_rps = round(self.requests / seconds, 1) if seconds else 0.0
        if latencies:
            ordered = sorted(latencies)
            self.p50_ms = round(statistics.median(ordered) * 1000, 1)
            self.p99_ms = round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1)
            self.max_ms = round(ordered[-1] * 1000, 1)
        self.errors = self.errors[:5]


@dataclass(frozen=True)
class Member:
    key: str
    lora_id: str
    upload_id: str


async def timed(
    client: httpx.AsyncClient, phase: Phase, latencies: list[float], method: str, url: str, **kw
) -> httpx.Response | None:
    started = time.perf_counter()
    phase.requests += 1
    try:
        resp = await client.request(method, url, **kw)
    except httpx.HTTPError as exc:
        phase.lost += 1
        phase.errors.append(f"{method} {url}: {type(exc).__name__}: {exc}")
        return None
    latencies.append(time.perf_counter() - started)
    if resp.status_code >= 500:
        phase.status_5xx += 1
        phase.errors.append(f"{method} {url}: {resp.status_code} {resp.text[:200]}")
    elif resp.status_code >= 400:
        phase.status_4xx += 1
        phase.errors.append(f"{method} {url}: {resp.status_code} {resp.text[:200]}")
    else:
        phase.ok += 1
    return resp


async def setup_members(client: httpx.AsyncClient) -> list[Member]:
    data = training_zip()
    members = []
    for n in range(MEMBERS):
        reg = await client.post("/api/users/register", params={"email": f"load{n}@example.com"})
        reg.raise_for_status()
        key = reg.json()["api_key"]
        h = {"X-API-Key": key}
        target = (
            await client.post(
                "/api/loras/uploads/url",
                params={"name": f"set {n}", "trigger_word": "tadz", "file_name": "set.zip"},
                headers=h,
            )
        ).json()
        parts = urlsplit(target["upload_url"])
        put = await client.put(
            f"{parts.path}?{parts.query}", content=data, headers=target["headers"]
        )
        put.raise_for_status()
        started = await client.post(f"/api/loras/trainings/{target['id']}", headers=h)
        assert started.status_code == 202, started.text
        members.append(Member(key, started.json()["id"], target["id"]))
    for m in members:
        while True:
            body = (
                await client.get(
                    f"/api/loras/trainings/{m.upload_id}", headers={"X-API-Key": m.key}
                )
            ).json()
            if body["status"] in ("succeeded", "failed", "canceled"):
                assert body["status"] == "succeeded", body
                break
            await asyncio.sleep(0.2)
    return members


def read_paths(m: Member) -> list[str]:
    return [
        "/api/voices",
        "/api/voices/uploads",
        "/api/loras/uploads",
        "/api/loras/trainings",
        f"/api/loras/trainings/{m.upload_id}",
        "/api/loras/generations?limit=5",
        "/api/voices/generations?limit=5",
    ]


async def metadata_phase(
    client: httpx.AsyncClient, members: list[Member], clients: int, reads: int
) -> Phase:
    phase = Phase("metadata", clients)
    latencies: list[float] = []

    async def one(i: int) -> None:
        m = members[i % len(members)]
        paths = read_paths(m)
        for r in range(reads):
            await timed(
                client,
                phase,
                latencies,
                "GET",
                paths[(i + r) % len(paths)],
                headers={"X-API-Key": m.key},
            )

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    phase.finish(latencies, time.perf_counter() - started)
    return phase


async def generation_phase(
    client: httpx.AsyncClient, members: list[Member], clients: int
) -> tuple[Phase, int]:
    phase = Phase("generation", clients)
    latencies: list[float] = []
    answered_ids: list[str] = []

    async def one(i: int) -> None:
        m = members[i % len(members)]
        resp = await timed(
            client,
            phase,
            latencies,
            "POST",
            f"/api/loras/{m.lora_id}/generations",
            json={"prompt": f"a blue disc number {i}"},
            headers={"X-API-Key": m.key},
        )
        if resp is not None and resp.status_code == 200:
            answered_ids.append(resp.json()["id"])

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    phase.finish(latencies, time.perf_counter() - started)
    assert len(set(answered_ids)) == len(answered_ids), "a generation id was answered twice"
    return phase, len(answered_ids)


async def stored_generations(client: httpx.AsyncClient, members: list[Member]) -> int:
    total = 0
    for m in members:
        offset = 0
        while True:
            page = (
                await client.get(
                    "/api/loras/generations",
                    params={"limit": 100, "offset": offset},
                    headers={"X-API-Key": m.key},
                )
            ).json()
            total += len(page)
            if len(page) < 100:
                break
            offset += 100
    return total


async def run(levels: list[int], reads: int, url: str) -> dict[str, object]:
    top = max(levels)
    limits = httpx.Limits(max_connections=top + 10, max_keepalive_connections=top + 10)
    timeout = httpx.Timeout(900.0, connect=60.0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        started = time.perf_counter()
        members = await setup_members(client)
        setup_s = time.perf_counter() - started
        rows = []
        answered_total = 0
        for clients in levels:
            meta = await metadata_phase(client, members, clients, reads)
            gen, answered = await generation_phase(client, members, clients)
            answered_total += answered
            for phase in (meta, gen):
                rows.append(asdict(phase))
                print(
                    f"{phase.clients:>4} clients  {phase.name:<10} {phase.requests:>6} req  "
                    f"{phase.throughput_rps:>8.1f} req/s  p50 {phase.p50_ms:>8.1f} ms  "
                    f"p99 {phase.p99_ms:>8.1f} ms  5xx {phase.status_5xx}  lost {phase.lost}",
                    flush=True,
                )
        stored = await stored_generations(client, members)
    return {
        "levels": levels,
        "reads_per_client": reads,
        "setup_seconds": round(setup_s, 1),
        "phases": rows,
        "requests_total": sum(int(r["requests"]) for r in rows),  # type: ignore[call-overload]
        "lost_total": sum(int(r["lost"]) for r in rows),  # type: ignore[call-overload]
        "status_5xx_total": sum(int(r["status_5xx"]) for r in rows),  # type: ignore[call-overload]
        "generations_answered_200": answered_total,
        "generations_stored_by_engine": stored,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="10,100,500")
    parser.add_argument("--reads", type=int, default=20, help="metadata GETs per client")
    parser.add_argument("--workers", type=int, default=2, help="engine job worker threads")
    parser.add_argument("--keep-log", type=Path, help="copy the engine's log here")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        config = write_config(data, args.workers)
        port = free_port()
        env = {**os.environ, "TADA_CONFIG": str(config)}
        env.pop("TADA_ENGINE_SECRET_KEY", None)
        log = (data / "engine.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            else:
                raise SystemExit("the engine did not start")
            result = asyncio.run(run(levels, args.reads, url))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            log.close()
            if args.keep_log:
                args.keep_log.write_bytes((data / "engine.log").read_bytes())
    result |= {
        "engine_job_workers": args.workers,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "server": "uvicorn (one process), SQLite, huey in-process consumer, tiny image model",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"requests {result['requests_total']}, lost {result['lost_total']}, "
        f"5xx {result['status_5xx_total']}, generations answered "
        f"{result['generations_answered_200']} / stored {result['generations_stored_by_engine']}"
    )
    return 0 if result["lost_total"] == 0 and result["status_5xx_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
