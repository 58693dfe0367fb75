"""Benchmark: the peak memory each hostile zip costs the engine and the bot.

Every bomb zip of ``tests/security/bombs.py`` goes, in a fresh child process per case and
stage, through:

- ``engine-put``: the pre-signed PUT of a real in-process engine (the zip check it runs);
- ``engine-train-start``: ``POST /api/loras/trainings/{id}`` on that zip already stored
  (as one kept by an older engine, or a job recovered after a restart, would be);
- ``engine-train``: the worker's training job on it (tiny built-in model, 2 steps), after
  a first training warmed the model up. The zip is uploaded as a member's is: one the PUT
  refuses is never trained (its outcome is the PUT's); one it accepts is decoded whole.
  (A zip swapped in after its check is refused at training: the engine compares the
  check's digest, so a swapped file would measure nothing.);
- ``bot-check``: the bot's upload check (``bot.media.inspect_zip``) on the zip's bytes.

Each child reports its RSS growth over its own baseline (taken after set-up, with the zip's
bytes already in memory) at the peak: the larger of a 2 ms RSS sampler and the kernel's
``ru_maxrss`` when that rose during the run, over the process tree: decoders run confined
in children of their own (:mod:`engine.confine`), sampled with their parent, and each
reports its own peak and CPU (its whole RSS, not growth: an upper bound). The parent
kills a child past ``--kill-mb``.
Writes bench/results/hostile.json; the target is under 300 MB for any input.

    python bench/hostile.py [--case NAME ...] [--stage STAGE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

RESULTS = Path(__file__).parent / "results"
STAGES = ("engine-put", "engine-train-start", "engine-train", "bot-check")
TARGET_MB = 300.0
MiB = 1024 * 1024


def _tree_rss(proc: psutil.Process) -> int:
    """RSS of ``proc`` and all its descendants (the confined decoders run in children)."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        procs = [proc]
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


class PeakRss(threading.Thread):
    """Samples the RSS of this process and its descendants every 2 ms; :meth:`finish`
    gives the peak growth in MB."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        gc.collect()
        self.proc = psutil.Process()
        self.baseline = _tree_rss(self.proc)
        self.max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak = self.baseline
        self.done = threading.Event()
        self.cpu_before = time.process_time()
        self.cpu_seconds = 0.0
        self.growth_mb = 0.0
        self.limits_hit: list[str] = []
        self.confined: list[Any] = []
        from engine.confine import process_confiner

        process_confiner().observers.append(self.confined.append)

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, _tree_rss(self.proc))
            time.sleep(0.002)

    def finish(self) -> float:
        """The process tree's peak RSS growth in MB: the sampled tree's, or the largest
        confined decoder's own peak (the kernel's, for one too short-lived to sample) if
        higher; :attr:`cpu_seconds` (this process and its confined decoders) alongside."""
        self.done.set()
        self.join()
        max_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = max(self.peak, max_after if max_after > self.max_before else 0)
        child_peak = max((u.peak_rss_bytes for u in self.confined), default=0)
        self.cpu_seconds = round(
            time.process_time() - self.cpu_before + sum(u.cpu_seconds for u in self.confined), 2
        )
        self.limits_hit = sorted({u.outcome for u in self.confined} - {"ok", "refused"})
        self.growth_mb = round(max(peak - self.baseline, child_peak, 0) / MiB, 1)
        return self.growth_mb


def _h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def _engine_stage(stage: str, data: bytes, tmp: Path) -> tuple[str, PeakRss]:
    import anyio.to_thread
    import httpx

    from engine.app import create_app
    from engine.settings import EngineSettings, JobSettings
    from tests.security.bombs import good_images, zip_of

    settings = EngineSettings.model_validate(
        {
            "data_dir": tmp / "engine",
            "jobs": JobSettings(in_process_workers=0, wait_timeout_seconds=30),
            "image": {"training": {"steps": 2, "rank": 4, "batch_size": 2}},
        }
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        services = app.state.services
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
            resp = await api.post("/api/users/register", params={"email": "a@example.com"})
            key = resp.json()["api_key"]

            async def upload(body: bytes) -> tuple[str, httpx.Response]:
                made = (
                    await api.post(
                        "/api/loras/uploads/url",
                        params={"name": "n", "trigger_word": "tadz", "file_name": "s.zip"},
                        headers=_h(key),
                    )
                ).json()
                parts = urlsplit(made["upload_url"])
                put = await api.put(
                    f"{parts.path}?{parts.query}", content=body, headers=made["headers"]
                )
                return str(made["id"]), put

            good = zip_of(good_images())
            if stage == "engine-put":
                watch = PeakRss()
                watch.start()
                _, put = await upload(data)
                watch.finish()
                return f"PUT {put.status_code}: {put.text[:300]}", watch
            if stage == "engine-train":
                # Warm up: one real training, so the model is loaded before the baseline.
                warm_id, _ = await upload(good)
                await api.post(f"/api/loras/trainings/{warm_id}", headers=_h(key))
                await anyio.to_thread.run_sync(services.worker.drain)
                watch = PeakRss()
                watch.start()
                upload_id, put = await upload(data)
                watch.finish()
                if put.status_code != 200:
                    return f"PUT {put.status_code}: {put.text[:300]}", watch
                started = await api.post(f"/api/loras/trainings/{upload_id}", headers=_h(key))
                assert started.status_code == 202, started.text
            else:
                # engine-train-start: a zip already stored, as an older engine kept it.
                upload_id, put = await upload(good)
                assert put.status_code == 200, put.text
                services.storage.upload_path(upload_id).write_bytes(data)
            watch = PeakRss()
            watch.start()
            if stage == "engine-train-start":
                resp = await api.post(f"/api/loras/trainings/{upload_id}", headers=_h(key))
                watch.finish()
                return f"POST {resp.status_code}: {resp.text[:300]}", watch
            await anyio.to_thread.run_sync(services.worker.drain)
            watch.finish()
            got = (await api.get(f"/api/loras/trainings/{upload_id}", headers=_h(key))).json()
            return f"training {got['status']}: {str(got.get('error'))[:300]}", watch


def _bot_stage(data: bytes) -> tuple[str, PeakRss]:
    from bot.media import MediaRejected, inspect_zip

    watch = PeakRss()
    watch.start()
    try:
        image_set = inspect_zip(data)
    except MediaRejected as exc:
        watch.finish()
        return f"refused: {str(exc)[:300]}", watch
    watch.finish()
    left_out = "; ".join(f"{r.name[-40:]}: {r.reason}" for r in image_set.refused)
    return f"kept {len(image_set.kept)}, left out: {left_out[:300]}", watch


def child(stage: str, zip_path: Path) -> dict[str, Any]:
    """Run one stage on one zip in this process; the measurement of this process and its
    descendants (the confined decoders), CPU included."""
    data = zip_path.read_bytes()
    started = time.perf_counter()
    if stage == "bot-check":
        import bot.media  # noqa: F401  (imported before the baseline)

        outcome, watch = _bot_stage(data)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            outcome, watch = asyncio.run(_engine_stage(stage, data, Path(tmp)))
    return {
        "outcome": outcome,
        "peak_rss_growth_mb": watch.growth_mb,
        "cpu_seconds": watch.cpu_seconds,
        "limits_hit": watch.limits_hit,
        "seconds": round(time.perf_counter() - started, 2),
    }


def run_child(stage: str, zip_path: Path, kill_mb: int, timeout: float) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", stage, str(zip_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    watched = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    worst = 0
    while proc.poll() is None:
        try:
            worst = max(worst, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if worst > kill_mb * MiB or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            why = f"over {kill_mb} MB RSS" if worst > kill_mb * MiB else f"over {timeout:.0f} s"
            return {"outcome": f"killed: {why}", "peak_rss_growth_mb": None, "seconds": None}
        time.sleep(0.01)
    out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"outcome": f"crashed: {err.strip()[-300:]}", "peak_rss_growth_mb": None}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", nargs=2, metavar=("STAGE", "ZIP"), help=argparse.SUPPRESS)
    parser.add_argument("--case", action="append", help="bomb names (default: all)")
    parser.add_argument("--stage", action="append", choices=STAGES)
    parser.add_argument("--kill-mb", type=int, default=2500)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS / "hostile.json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `make bench` runs it as a file
    from tests.security.bombs import bomb_zips

    zips = bomb_zips()
    names = args.case or list(zips)
    stages = args.stage or list(STAGES)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            family, data = zips[name]
            path = Path(tmp) / "bomb.zip"
            path.write_bytes(data)
            for stage in stages:
                got = run_child(stage, path, args.kill_mb, args.timeout)
                row = {"case": name, "family": family, "zip_bytes": len(data), "stage": stage}
                results.append({**row, **got})
                print(
                    f"{name:45.45s} {stage:19s} {got['peak_rss_growth_mb']!s:>8} MB "
                    f"{got.get('cpu_seconds')!s:>6} s  "
                    f"{got['outcome'][:90]}",
                    flush=True,
                )
    measured = [r["peak_rss_growth_mb"] for r in results if r["peak_rss_growth_mb"] is not None]
    cpu = [r["cpu_seconds"] for r in results if r.get("cpu_seconds") is not None]
    summary = {
        "target_mb": TARGET_MB,
        "worst_mb": max(measured, default=None),
        "worst_cpu_seconds": max(cpu, default=None),
        "all_under_target": all(r["peak_rss_growth_mb"] is not None for r in results)
        and all(m < TARGET_MB for m in measured),
        "cases": len(names),
        "runs": len(results),
        "machine": f"{os.cpu_count()} CPUs shared with other work; numbers are per process "
        "tree (the process and its confined decoders)",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"worst {summary['worst_mb']} MB; "
        f"all under {TARGET_MB:.0f} MB: {summary['all_under_target']}"
    )
    return 0 if summary["all_under_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
