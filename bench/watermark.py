"""Benchmark of the watermark (Resemble AI's PerTh net, engine/voice/watermark.py): does a
changed copy of a generation still carry it, does speech not made here ever, and what
does marking cost (time, SNR, likeness to the cloned voice)?

The same material and changes as bench/trace.py (the fingerprint's table): the engine's
CPU reference speaks its six texts in two cloned voices (12 generations), marked as the
worker marks them; each goes through every change with the bundled ffmpeg, is decoded by
the engine's confined decoder at the trace route's rate and judged as
``POST /api/trace/speech`` judges it. Negatives: bench/trace.py's 67 clips not made here
(LibriVox, CMU Sphinx, ALSA, flite reading the same and other texts), and the 12
generations themselves unmarked.

    python bench/watermark.py        # writes bench/results/watermark.json
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.trace import TEXTS, TRANSFORMS, ffmpeg, negatives, wav_file
from bench.voice import make_speakers, sample_file
from engine.voice.audio import decode, load_sample
from engine.voice.backend import stream_speech
from engine.voice.fingerprint import FINGERPRINT_RATE
from engine.voice.reference import CpuReferenceBackend
from engine.voice.settings import VoiceSettings
from engine.voice.trace import MAX_TRACE_SECONDS
from engine.voice.watermark import (
    GUESS_SECONDS,
    MARK_THRESHOLD,
    RATE_STEP,
    RATE_STEPS,
    Detection,
    Watermarker,
)

RESULTS = Path(__file__).parent / "results"

# The fingerprint's changes, with the pitch shifts it lacks (so -4..+4 semitones is whole).
CHANGES: dict[str, tuple[list[str], str]] = dict(TRANSFORMS)
for semitones in (-4, -2, 3):
    CHANGES[f"pitch {semitones:+d} semitones (tempo kept), opus"] = (
        ["-af", f"rubberband=pitch={2 ** (semitones / 12):.4f}", "-c:a", "libopus", "-b:a", "32k"],
        "ogg",
    )


def judged(watermarker: Watermarker, path: Path) -> tuple[float, Detection]:
    """The clip at ``path`` decoded and judged as it is, and as the trace route judges it
    (with the speed guesses)."""
    audio = decode(path, FINGERPRINT_RATE, MAX_TRACE_SECONDS)
    as_is = watermarker.detect(audio, FINGERPRINT_RATE)
    return as_is, watermarker.find(audio, FINGERPRINT_RATE)


def snr_db(clean: np.ndarray, marked: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(clean**2) / max(np.sum((marked - clean) ** 2), 1e-12)))


def main() -> None:
    started = time.perf_counter()
    settings = VoiceSettings()
    backend = CpuReferenceBackend(settings)
    rate = backend.sample_rate
    watermarker = Watermarker()
    t0 = time.perf_counter()
    watermarker.load()
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor()},
        "method": "PerTh implicit (resemble-perth 1.0.1, packaged step-250000 weights), "
        f"decoder confidence over 10 s windows, the best; marked above {MARK_THRESHOLD}. "
        f"as_is: the clip as it is; with_guesses (the trace route): also the loudest "
        f"{GUESS_SECONDS} s read at {2 * RATE_STEPS} other rates ({RATE_STEP}^-{RATE_STEPS}.."
        f"{RATE_STEP}^{RATE_STEPS})",
        "load_seconds": round(time.perf_counter() - t0, 2),
    }
    cost = {"audio_seconds": 0.0, "apply_cpu": 0.0, "apply_wall": 0.0}
    cost.update(detect_cpu=0.0, detect_wall=0.0)
    audible: list[dict[str, float]] = []
    first_pieces: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        made: dict[str, Path] = {}
        plain: dict[str, Path] = {}
        for voice, audio in make_speakers(backend).items():
            sample = load_sample(
                sample_file(audio, rate, directory, voice),
                sample_rate=rate,
                min_seconds=settings.min_sample_seconds,
                max_seconds=settings.max_sample_seconds,
                target_dbfs=settings.target_dbfs,
            )
            profile = backend.analyse(sample)
            for i, text in enumerate(TEXTS):
                speech = backend.synthesise(text, profile)
                c0, w0 = time.process_time(), time.perf_counter()
                marked = watermarker.apply(speech.audio, speech.sample_rate)
                cost["apply_cpu"] += time.process_time() - c0
                cost["apply_wall"] += time.perf_counter() - w0
                cost["audio_seconds"] += speech.seconds
                c0, w0 = time.process_time(), time.perf_counter()
                watermarker.detect(marked, speech.sample_rate)
                cost["detect_cpu"] += time.process_time() - c0
                cost["detect_wall"] += time.perf_counter() - w0
                before = backend.similarity(speech, profile)
                after = backend.similarity(type(speech)(marked, speech.sample_rate), profile)
                audible.append(
                    {
                        "snr_db": snr_db(speech.audio, marked),
                        "likeness_before": before,
                        "likeness_after": after,
                    }
                )
                name = f"{voice}-{i}"
                made[name] = wav_file(marked, rate, directory / f"{name}.wav")
                plain[name] = wav_file(speech.audio, rate, directory / f"{name}-plain.wav")
            # A stream's first piece (what a listener waits for), marked alone.
            piece = next(iter(stream_speech(backend, TEXTS[3], profile)))
            w0 = time.perf_counter()
            watermarker.apply(piece.audio, piece.sample_rate)
            first_pieces.append(
                {"piece_seconds": piece.seconds, "apply_wall": time.perf_counter() - w0}
            )
        print(f"{len(made)} generations marked ({time.perf_counter() - started:.0f} s)")
        seconds = cost["audio_seconds"]
        results["generations"] = len(made)
        results["cost_per_audio_second"] = {
            "apply_cpu_seconds": round(cost["apply_cpu"] / seconds, 3),
            "apply_wall_seconds": round(cost["apply_wall"] / seconds, 3),
            "detect_cpu_seconds": round(cost["detect_cpu"] / seconds, 3),
            "detect_wall_seconds": round(cost["detect_wall"] / seconds, 3),
            "audio_seconds": round(seconds, 1),
        }
        results["stream_first_piece"] = {
            "piece_seconds": [round(p["piece_seconds"], 2) for p in first_pieces],
            "apply_wall_seconds": [round(p["apply_wall"], 3) for p in first_pieces],
        }
        results["audible_cost"] = {
            "snr_db_median": round(float(np.median([a["snr_db"] for a in audible])), 1),
            "snr_db_min": round(min(a["snr_db"] for a in audible), 1),
            "likeness_before_mean": round(
                float(np.mean([a["likeness_before"] for a in audible])), 4
            ),
            "likeness_after_mean": round(float(np.mean([a["likeness_after"] for a in audible])), 4),
            "likeness_change_max": round(
                max(abs(a["likeness_after"] - a["likeness_before"]) for a in audible), 4
            ),
            "likeness": "resemblyzer cosine of the speech to the cloned voice's sample "
            "(the engine's own similarity)",
        }
        print(json.dumps(results["cost_per_audio_second"]), json.dumps(results["audible_cost"]))

        fill = {
            "rate": str(rate),
            "rate_092": str(round(rate * 0.92)),
            "rate_108": str(round(rate * 1.08)),
            "rate_115": str(round(rate * 1.15)),
            "rate_130": str(round(rate * 1.30)),
        }
        detection: dict[str, Any] = {}
        for label, (args, ext) in CHANGES.items():
            scores, finds = [], []
            for name, src in made.items():
                dst = directory / f"q-{name}.{ext}"
                ffmpeg(src, dst, [a.format(**fill) for a in args])
                as_is, found_at = judged(watermarker, dst)
                scores.append(as_is)
                finds.append(found_at)
            found = sum(s > MARK_THRESHOLD for s in scores)
            guessed = sum(f.marked for f in finds)
            detection[label] = {
                "tpr_as_is": round(found / len(scores), 3),
                "tpr_with_guesses": round(guessed / len(finds), 3),
                "clips": len(scores),
                "median_score_as_is": round(float(np.median(scores)), 3),
                "min_score_with_guesses": round(min(f.score for f in finds), 3),
                "speeds_found": sorted({f.speed for f in finds if f.marked}),
            }
            print(f"{label:45s} as is {found}/{len(scores)}  with guesses {guessed}/{len(finds)}")
        results["detection"] = detection

        false_positives: dict[str, Any] = {}
        sources = negatives(directory)
        sources["ours unmarked (watermark = false)"] = list(plain.values())
        all_neg = hits_total = 0
        judge_cost = {"cpu": 0.0, "wall": 0.0, "clips": 0}
        for source, paths in sources.items():
            c0, w0 = time.process_time(), time.perf_counter()
            answers = [judged(watermarker, p) for p in paths]
            judge_cost["cpu"] += time.process_time() - c0
            judge_cost["wall"] += time.perf_counter() - w0
            judge_cost["clips"] += len(paths)
            hits = sum(a > MARK_THRESHOLD for a, _ in answers)
            guessed = sum(f.marked for _, f in answers)
            false_positives[source] = {
                "clips": len(paths),
                "false_positives_as_is": hits,
                "false_positives_with_guesses": guessed,
                "max_score_as_is": round(max(a for a, _ in answers), 3),
                "max_score_with_guesses": round(max(f.score for _, f in answers), 3),
            }
            if not source.startswith("ours"):
                all_neg += len(paths)
                hits_total += guessed
            print(f"negatives {source:12s} {hits}/{guessed} of {len(paths)} (as is/guesses)")
        results["false_positives"] = false_positives
        results["judging_an_unmarked_clip_seconds"] = {
            "cpu": round(judge_cost["cpu"] / judge_cost["clips"], 2),
            "wall": round(judge_cost["wall"] / judge_cost["clips"], 2),
            "note": "decode, the clip as it is, then the speed guesses (none marked)",
        }
        results["fpr_with_guesses"] = round(hits_total / max(all_neg, 1), 4)
        results["negatives"] = all_neg
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "watermark.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"FPR {hits_total}/{all_neg}; wrote {RESULTS / 'watermark.json'}")


if __name__ == "__main__":
    main()
