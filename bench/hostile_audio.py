"""Benchmark: what each hostile recording (issue 24, items 1 and 4) costs the engine and
the bot, each in a fresh process (tests/security/audio_probe.py): the process's own peak
RSS growth, the peak RSS of the decoder it ran (ffmpeg, confined), the CPU seconds of the
tree, and the outcome. The process tree is killed past ``--kill-mb``.

Families: ``audio header`` (a WAV, FLAC or Matroska file declaring a rate, channel count
or sample size no recording has) and ``mp4 boxes`` (too many boxes, nested too deep).
Stages: ``engine-decode`` (the engine's decode, the container check included), ``bot-check``
(the bot's check of an attachment). Writes bench/results/hostile_audio.json.

    python bench/hostile_audio.py [--case NAME ...] [--stage STAGE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.security import audio_hostile as hostile

RESULTS = Path(__file__).parent / "results"
STAGES = ("engine-decode", "bot-check")
TARGET_MB = 300.0
TARGET_CPU_S = 20.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", action="append", help="case names (default: all)")
    parser.add_argument("--stage", action="append", choices=STAGES)
    parser.add_argument("--kill-mb", type=int, default=2500)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS / "hostile_audio.json")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        families = {
            "audio header": {**hostile.lying_headers(tmp), **hostile.unchecked_headers(tmp)},
            "mp4 boxes": hostile.box_trees(),
        }
        for family, cases in families.items():
            for name, (data, file_name, _) in cases.items():
                if args.case and name not in args.case:
                    continue
                for stage in args.stage or STAGES:
                    got = hostile.measure(
                        stage, data, file_name, tmp, kill_mb=args.kill_mb, timeout=args.timeout
                    )
                    row = {"family": family, "case": name, "bytes": len(data), "stage": stage}
                    results.append({**row, **got})
                    print(
                        f"{name:26.26s} {stage:14s} self +{got.get('self_growth_mb')!s:>6} MB  "
                        f"decoder {got.get('decoder_peak_mb')!s:>6} MB  "
                        f"cpu {got.get('cpu_s')!s:>5} s  {got['outcome'][:70]}",
                        flush=True,
                    )

    def held(r: dict[str, Any]) -> bool:
        return (
            r["outcome"].startswith("refused")
            and r.get("self_growth_mb", 1e9) < TARGET_MB
            and r.get("decoder_peak_mb", 1e9) < TARGET_MB + 160
            and r.get("cpu_s", 1e9) < TARGET_CPU_S
        )

    per_family: dict[str, dict[str, int]] = {}
    for r in results:
        counts = per_family.setdefault(r["family"], {"tried": 0, "held": 0})
        counts["tried"] += 1
        counts["held"] += held(r)
    summary = {
        "target_mb": TARGET_MB,
        "target_cpu_s": TARGET_CPU_S,
        "families": per_family,
        "worst_self_growth_mb": max((r.get("self_growth_mb") or 0 for r in results), default=0),
        "worst_decoder_peak_mb": max((r.get("decoder_peak_mb") or 0 for r in results), default=0),
        "worst_cpu_s": max((r.get("cpu_s") or 0 for r in results), default=0),
        "machine": f"{os.cpu_count()} CPUs shared with other work; numbers are per process",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    return 0 if all(held(r) for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
