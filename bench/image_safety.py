"""Benchmark: the image safety classifier's false positives and the seconds it adds.

Every ordinary image of tests/bot/ordinary_images.py (the photos scikit-image and
scikit-learn ship, Pillow drawings of landscapes, portraits and shapes, and images of the
engine's tiny random model) goes through NudeNet's detector as the bot runs it. Prints
the images judged explicit (all false positives: none of them is), the scores nearest
the threshold, and the seconds per image (p50/p95, session loaded), and writes
bench/results/image_safety.json.

    python bench/image_safety.py [--threshold 0.5] [--drawings 10] [--tiny 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.safety.nudenet import NudeNetClassifier, model_path
from tests.bot.ordinary_images import drawings, photos, tiny_model_images

RESULTS = Path(__file__).parent / "results" / "image_safety.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--drawings", type=int, default=10)
    parser.add_argument("--tiny", type=int, default=4)
    args = parser.parse_args()
    if model_path() is None:
        raise SystemExit("nudenet is not installed: pip install 'tada-discord[nsfw-filter]'")
    classifier = NudeNetClassifier(threshold=args.threshold)
    images = [*photos(), *drawings(args.drawings), *tiny_model_images(args.tiny)]
    classifier.classify(images[0][1])  # the session loads once, at the first image
    rows, seconds = [], []
    for name, data in images:
        started = time.perf_counter()
        verdict = classifier.classify(data)
        seconds.append(time.perf_counter() - started)
        rows.append({"image": name, "score": round(verdict.score, 4), "label": verdict.label})
    flagged = [r["image"] for r in rows if r["score"] >= args.threshold]
    kinds: dict[str, int] = {}
    for name, _ in images:
        kinds[name.split(":")[0]] = kinds.get(name.split(":")[0], 0) + 1
    ordered = sorted(seconds)
    result = {
        "threshold": args.threshold,
        "images": len(images),
        "kinds": kinds,
        "false_positives": flagged,
        "false_positive_rate": round(len(flagged) / len(images), 4),
        "seconds_per_image_p50": round(statistics.median(seconds), 4),
        "seconds_per_image_p95": round(ordered[int(0.95 * (len(ordered) - 1))], 4),
        "highest_scores": sorted(rows, key=lambda r: -float(r["score"]))[:8],
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
