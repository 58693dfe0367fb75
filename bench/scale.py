"""Benchmark: the production layout on one machine (tests/scale/cluster.py), with numbers.

Real PostgreSQL and Redis (started from their wheels, tests/servers.py), ``tada-engine serve
--no-consumers`` API processes and ``tada-engine worker`` processes on one config:

- throughput: ``--members`` members (200 by default) each clone a voice, speak a line and
  draw a demo image through the HTTP API (3 jobs each), with 1 worker, then with 2 (a
  fresh database each time); jobs per second and the ratio, plus the database's check
  that no job was lost or done twice;
- metadata reads: wrk on GET /api/voices/uploads (a member's key check and list) against 1
  API process, then against 2 at once (one wrk each, rps summed); the ratio.

On one machine the workers and the API processes share its CPU cores, so the ratios say
how the design scales only up to the cores there are; on N machines each process has its
own. ``--members`` below 200 for a quick run.

    python bench/scale.py [--members 200] [--seconds 10] [--connections 50]

Writes bench/results/scale.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import ensure_wrk, run_wrk  # noqa: E402
from tests.bot.media_samples import speech_wav  # noqa: E402
from tests.scale.cluster import Cluster, cluster, run_members, short_sample  # noqa: E402
from tests.servers import postgres_server, redis_server  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def job_check(c: Cluster, members: int) -> dict[str, int]:
    """From the engine database: jobs finished, lost (not finished), done twice."""
    rows = c.query("SELECT status, count(*) FROM jobs GROUP BY status")
    by_status = {status: n for status, n in rows}
    made = sum(
        n
        for (n,) in (
            c.query(f"SELECT count(*) FROM {table}")[0]
            for table in ("voices", "voice_generations", "lora_generations")
        )
    )
    return {
        "jobs": sum(by_status.values()),
        "succeeded": by_status.get("succeeded", 0),
        "lost": 3 * members - by_status.get("succeeded", 0),
        "done_twice": made - 3 * members,
    }


def throughput(
    root: Path, pg_url: str, redis_url: str, members: int, workers: int, sample: bytes
) -> dict[str, float]:
    with cluster(root, database_url=pg_url, redis_url=redis_url, apis=2, workers=workers) as c:
        started = time.monotonic()
        runs = asyncio.run(run_members(c.bases, members, sample))
        wall = time.monotonic() - started
        failed = [r.errors for r in runs if r.errors]
        check = job_check(c, members)
    return {
        "workers": workers,
        "members": members,
        "wall_s": round(wall, 1),
        "jobs_per_s": round(3 * members / wall, 3),
        "members_failed": len(failed),
        **check,
    }


def reads(
    root: Path, pg_url: str, redis_url: str, apis: int, seconds: float, connections: int
) -> dict[str, float]:
    wrk = ensure_wrk()
    with cluster(root, database_url=pg_url, redis_url=redis_url, apis=apis, workers=0) as c:
        import httpx

        key = httpx.post(
            f"{c.bases[0]}/api/users/register", params={"email": f"reader{apis}@example.com"}
        ).json()["api_key"]
        headers = {"X-API-Key": key}
        url = "/api/voices/uploads"
        for base in c.bases:  # warm: the first request of each process opens its pool
            httpx.get(base + url, headers=headers, timeout=30)
        from concurrent.futures import ThreadPoolExecutor

        per = max(1, connections // apis)
        with ThreadPoolExecutor(apis) as pool:
            cells = list(
                pool.map(
                    lambda base: run_wrk(wrk, base + url, per, seconds, headers, None), c.bases
                )
            )
    return {
        "api_processes": apis,
        "connections": per * apis,
        "rps": round(sum(cell["rps"] for cell in cells), 1),
        "p99_ms": max(cell["p99_ms"] for cell in cells),
        "non_2xx": sum(cell["non_2xx"] for cell in cells),
        "socket_errors": sum(cell["socket_errors"] for cell in cells),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()
    sample = short_sample(asyncio.run(speech_wav()))
    result: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
        },
        "layout": "2 API processes (serve --no-consumers), N workers (worker --queues "
        "voice,image), PostgreSQL, Redis (split queues), local storage in one directory",
    }
    with postgres_server() as pg, redis_server() as redis:
        runs = []
        for workers in (1, 2):
            with tempfile.TemporaryDirectory(prefix="tada-scale-") as tmp:
                name = f"bench_w{workers}_{int(time.time())}"
                url = pg.create_database(name)
                redis.flush()
                runs.append(throughput(Path(tmp), url, redis.url(), args.members, workers, sample))
                print(json.dumps(runs[-1]), flush=True)
        read_cells = []
        for apis in (1, 2):
            with tempfile.TemporaryDirectory(prefix="tada-scale-") as tmp:
                url = pg.create_database(f"bench_r{apis}_{int(time.time())}")
                redis.flush()
                read_cells.append(
                    reads(Path(tmp), url, redis.url(), apis, args.seconds, args.connections)
                )
                print(json.dumps(read_cells[-1]), flush=True)
    result["machine"]["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]  # type: ignore[index]
    result["throughput"] = runs
    result["throughput_ratio_2_vs_1_workers"] = round(
        runs[1]["jobs_per_s"] / runs[0]["jobs_per_s"], 2
    )
    result["metadata_reads"] = read_cells
    result["read_ratio_2_vs_1_api_processes"] = round(
        read_cells[1]["rps"] / read_cells[0]["rps"], 2
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
