"""Benchmark: how long `tada-bot` without a token takes to offer its sandbox page.

Starts ``python -m bot`` (as ``make run`` does) on a fresh data directory (first run:
migrations, generated keys) and again on the same one (later runs), and times from
process start to the printed URL, and to the page's first state answer (the page is
usable). Writes the numbers to bench/results/sandbox_start.json.

    python bench/sandbox_start.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).parents[1]
RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_start(workdir: Path) -> tuple[float, float]:
    """Seconds to the printed URL, and to the page's first state."""
    config = workdir / "config.toml"
    config.write_text('[general]\ndata_dir = "data"\n\n[engine]\nport = 0\n')
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    env.update(TADA_CONFIG=str(config), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "--sandbox-port", str(port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = ""
        for line in process.stdout:
            if "Open:" in line:
                url = line.split("Open:", 1)[1].strip()
                break
        if not url:
            raise RuntimeError("the sandbox printed no URL")
        to_url = time.perf_counter() - started
        token = url.split("#", 1)[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as page:
            opened = page.post("/api/pages", json={}, headers={"X-Simcord-Capability": token})
            opened.raise_for_status()
        to_page = time.perf_counter() - started
        return to_url, to_page
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    first: list[tuple[float, float]] = []
    later: list[tuple[float, float]] = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            first.append(one_start(Path(tmp)))
            later.append(one_start(Path(tmp)))

    def summary(samples: list[tuple[float, float]]) -> dict[str, float]:
        return {
            "url_median_s": round(statistics.median(s[0] for s in samples), 2),
            "page_median_s": round(statistics.median(s[1] for s in samples), 2),
            "page_max_s": round(max(s[1] for s in samples), 2),
        }

    result = {
        "runs": args.runs,
        "first_run": summary(first),
        "later_run": summary(later),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sandbox_start.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
