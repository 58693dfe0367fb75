"""Benchmark: a large pre-signed PUT through a real uvicorn on loopback.

Prints MB/s through the engine, MB/s writing the same bytes straight to disk (the
reference), their ratio, and the engine process's RSS growth while it received the file.
Writes the numbers to bench/results/upload.json.

    python bench/upload.py [--mb 256] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

CHUNK = 1024 * 1024
RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def payload(total_mb: int) -> Iterator[bytes]:
    block = os.urandom(CHUNK)
    for _ in range(total_mb):
        yield block


def raw_disk_rate(directory: Path, total_mb: int) -> float:
    path = directory / "raw.bin"
    start = time.perf_counter()
    with path.open("wb") as fh:
        for block in payload(total_mb):
            fh.write(block)
    elapsed = time.perf_counter() - start
    path.unlink()
    return total_mb / elapsed


class RssWatcher(threading.Thread):
    """Samples a process's RSS every 10 ms and keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        port = free_port()
        max_bytes = (args.mb + 1) * CHUNK
        (data / "config.toml").write_text(
            f'[engine]\ndata_dir = "{data / "engine"}"\nport = {port}\n'
            f"[engine.uploads]\nmax_audio_bytes = {max_bytes}\n"
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "engine", "--config", str(data / "config.toml"), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=300) as client:
                for _ in range(200):
                    try:
                        client.get("/healthz")
                        break
                    except httpx.TransportError:
                        time.sleep(0.1)
                key = client.post(
                    "/api/users/register", params={"email": "bench@example.com"}
                ).json()["api_key"]
                engine_rates, raw_rates, growths = [], [], []
                for _ in range(args.runs):
                    # A voice upload: its PUT stores the bytes as they come (a LoRA zip's PUT
                    # also runs the zip checks, which these random bytes would fail).
                    target = client.post(
                        "/api/voices/uploads/url",
                        headers={"X-API-Key": key},
                        params={"name": "bench", "file_name": "b.wav"},
                    ).json()
                    watcher = RssWatcher(server.pid)
                    before = watcher.peak
                    watcher.start()
                    start = time.perf_counter()
                    resp = client.put(
                        target["upload_url"], content=payload(args.mb), headers=target["headers"]
                    )
                    elapsed = time.perf_counter() - start
                    watcher.stop.set()
                    watcher.join()
                    resp.raise_for_status()
                    assert resp.json()["size_bytes"] == args.mb * CHUNK
                    engine_rates.append(args.mb / elapsed)
                    growths.append((watcher.peak - before) / CHUNK)
                    raw_rates.append(raw_disk_rate(data, args.mb))
        finally:
            server.terminate()
            server.wait(10)
    result = {
        "file_mb": args.mb,
        "runs": args.runs,
        "engine_mb_s_median": round(statistics.median(engine_rates), 1),
        "raw_disk_mb_s_median": round(statistics.median(raw_rates), 1),
        "ratio_engine_to_raw": round(
            statistics.median(engine_rates) / statistics.median(raw_rates), 3
        ),
        "engine_rss_growth_mb_max": round(max(growths), 1),
        "engine_rss_growth_mb_median": round(statistics.median(growths), 1),
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "upload.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
