"""Benchmark of the CPU reference voice back end (Piper + WORLD + resemblyzer).

Prints and writes to bench/results/voice.json:
- real-time factor of generation (compute seconds per second of audio) for about 5 s,
  30 s and 120 s of speech, split into base speech + conversion, similarity, MP3 encoding;
- time to create a voice from a 30 s sample (decode, checks, analysis, embedding), warm
  (models loaded) and cold (the first one in a process, model loading included);
- speaker similarity (resemblyzer cosine) of converted speech to two synthetic target
  speakers, next to the unconverted base voice's, for each conversion variant.

    python bench/voice.py [--runs 3]
    python bench/voice.py --backend pocket [--runs 3]   # Pocket TTS: bench/voice_pocket.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import librosa
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.voice import world
from engine.voice.audio import encode, load_sample
from engine.voice.reference import CpuReferenceBackend
from engine.voice.settings import AudioFormat, VoiceSettings
from engine.voice.similarity import cosine
from tests.engine.voice.conftest import (
    GENERATION_TEXT,
    SAMPLE_TEXT,
    median_f0,
    wav_bytes,
)

RESULTS = Path(__file__).parent / "results"
# Plain narrative prose; about 15 characters per second of Piper speech.
PROSE = (
    "The morning train was late again, so Maria walked the long way to the office. "
    "She passed the bakery on the corner, where the smell of fresh bread drifted into "
    "the street. A delivery van stopped beside her, and the driver asked for directions "
    "to the old library. She pointed him toward the river and kept walking. By the time "
    "she reached her desk, the coffee was cold and the meeting had already started. "
    "Nobody seemed to mind. The projector was broken, and everyone was laughing about "
    "the slides that would not load. "
)


def text_of(chars: int) -> str:
    text = (PROSE * (chars // len(PROSE) + 1))[:chars]
    return text[: text.rfind(".") + 1] if "." in text else text


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def make_speakers(backend: CpuReferenceBackend) -> dict[str, np.ndarray]:
    """The same two target speakers the quality test uses."""
    base = backend.base_speech(SAMPLE_TEXT)
    rate = base.sample_rate
    feats = world.analyse(base.audio, rate)
    shift = world.Conversion(0.0, 1.0, float(np.log(1.6)), 1.0, 1.15, np.zeros(world.N_BANDS))
    high = world.synthesise(world.convert(feats, shift))
    low = librosa.resample(base.audio, orig_sr=rate, target_sr=int(rate / 0.8))
    return {
        "high": (high / np.max(np.abs(high)) * 0.5).astype(np.float32),
        "low": (low / np.max(np.abs(low)) * 0.5).astype(np.float32),
    }


def sample_file(audio: np.ndarray, rate: int, directory: Path, name: str) -> Path:
    path = directory / f"{name}.wav"
    path.write_bytes(wav_bytes(audio.astype(np.float32), rate))
    return path


def bench_generation(backend: CpuReferenceBackend, profile: Any, runs: int) -> list[dict]:
    rows = []
    for label, chars in (("5s", 75), ("30s", 450), ("120s", 1800)):
        text = text_of(chars)
        best: dict[str, float] | None = None
        for _ in range(runs):
            speech, t_synth = timed(backend.synthesise, text, profile)
            _, t_sim = timed(backend.similarity, speech, profile)
            _, t_enc = timed(encode, speech.audio, speech.sample_rate, AudioFormat.MP3, 96)
            total = t_synth + t_sim + t_enc
            row = {
                "audio_s": round(speech.seconds, 2),
                "synth_s": t_synth,
                "similarity_s": t_sim,
                "encode_s": t_enc,
                "total_s": total,
            }
            if best is None or total < best["total_s"]:
                best = row
        assert best is not None
        rtf = best["total_s"] / best["audio_s"]
        rows.append(
            {
                "target": label,
                "chars": len(text),
                **{k: round(v, 3) for k, v in best.items()},
                "rtf": round(rtf, 3),
                "rtf_synth_only": round(best["synth_s"] / best["audio_s"], 3),
            }
        )
        print(
            f"generation {label:>4}: {best['audio_s']:6.1f} s audio in {best['total_s']:5.2f} s"
            f" -> RTF {rtf:.3f} (synth {best['synth_s']:.2f}, similarity "
            f"{best['similarity_s']:.2f}, mp3 {best['encode_s']:.2f})"
        )
    return rows


def bench_creation(
    backend: CpuReferenceBackend, settings: VoiceSettings, path: Path, runs: int
) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sample = load_sample(
            path,
            sample_rate=backend.sample_rate,
            min_seconds=settings.min_sample_seconds,
            max_seconds=settings.max_sample_seconds,
            target_dbfs=settings.target_dbfs,
        )
        backend.analyse(sample)
        times.append(time.perf_counter() - start)
    return times


VARIANTS: dict[str, dict[str, Any]] = {
    "f0 only": {"f0_spread_weight": 1.0, "warp_weight": 0.0, "envelope_weight": 0.0},
    "f0 + warp": {"f0_spread_weight": 1.0, "warp_weight": 1.0, "envelope_weight": 0.0},
    "f0 + warp + envelope 0.6 (default)": {
        "f0_spread_weight": 1.0,
        "warp_weight": 1.0,
        "envelope_weight": 0.6,
    },
    "f0 + warp + envelope 1.0": {
        "f0_spread_weight": 1.0,
        "warp_weight": 1.0,
        "envelope_weight": 1.0,
    },
    "default, harvest pitch tracker": {"f0_method": "harvest"},
}


def bench_similarity(
    settings: VoiceSettings, speakers: dict[str, np.ndarray], directory: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base_backend = CpuReferenceBackend(settings)
    rate = base_backend.sample_rate
    enc = base_backend.encoder
    base = base_backend.base_speech(GENERATION_TEXT)
    base_emb = enc.embed(base.audio, rate)
    targets = {n: enc.embed(a, rate) for n, a in speakers.items()}
    out["base_voice"] = {n: round(cosine(base_emb, e), 4) for n, e in targets.items()}
    print("similarity of the unconverted base voice to each target:", out["base_voice"])
    for variant, weights in VARIANTS.items():
        backend = CpuReferenceBackend(replace_settings(settings, weights), base_backend.encoder)
        row: dict[str, Any] = {}
        for name, audio in speakers.items():
            path = sample_file(audio, rate, directory, name)
            sample = load_sample(
                path,
                sample_rate=rate,
                min_seconds=settings.min_sample_seconds,
                max_seconds=settings.max_sample_seconds,
                target_dbfs=settings.target_dbfs,
            )
            profile = backend.analyse(sample)
            speech = backend.synthesise(GENERATION_TEXT, profile)
            emb = enc.embed(speech.audio, rate)
            other = next(n for n in speakers if n != name)
            row[name] = {
                "own_target": round(cosine(emb, targets[name]), 4),
                "other_target": round(cosine(emb, targets[other]), 4),
                "base_to_target": out["base_voice"][name],
                "warp": round(backend.conversion(profile).warp, 3),
                "f0_target_hz": round(median_f0(audio, rate), 1),
                "f0_generated_hz": round(median_f0(speech.audio, rate), 1),
            }
            r = row[name]
            print(
                f"{variant:36s} {name:4s}: own {r['own_target']:.3f}  other "
                f"{r['other_target']:.3f}  base {r['base_to_target']:.3f}  warp {r['warp']:.2f}"
                f"  F0 {r['f0_generated_hz']:.0f}/{r['f0_target_hz']:.0f} Hz"
            )
        out[variant] = row
    return out


def replace_settings(settings: VoiceSettings, changes: dict[str, Any]) -> VoiceSettings:
    return VoiceSettings.model_validate({**settings.model_dump(), **changes})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--backend",
        choices=["cpu-reference", "pocket"],
        default="cpu-reference",
        help="pocket: Pocket TTS with full-size random weights, next to the CPU reference "
        "(bench/voice_pocket.py, bench/results/voice_pocket.json)",
    )
    parser.add_argument(
        "--compare-only",
        action="store_true",
        help="pocket: only the int8 settings before/after, side by side, and the baseline "
        "(bench/results/voice_pocket_threads.json)",
    )
    parser.add_argument(
        "--variants-only",
        action="store_true",
        help="pocket: only float32 against the int8 variants (pocket_quantize, pocket_threads), "
        "one sentence and three, and int8's output change, merged into voice_pocket.json",
    )
    args = parser.parse_args()
    if args.backend == "pocket":
        from bench.voice_pocket import main as pocket_main

        pocket_main(args.runs, compare_only=args.compare_only, variants_only=args.variants_only)
        return
    settings = VoiceSettings()
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            # Other work on the machine inflates wall times; the best of --runs is kept.
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": settings.model_dump(mode="json"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        cold_start = time.perf_counter()
        backend = CpuReferenceBackend(settings)
        speakers = make_speakers(backend)
        # A 30 s sample: the low speaker's sample read twice, with a breath between.
        rate = backend.sample_rate
        pause = np.zeros(int(0.4 * rate), dtype=np.float32)
        long = np.concatenate([speakers["low"], pause, speakers["low"], pause, speakers["low"]])
        long = long[: 30 * rate]
        path30 = sample_file(long, rate, directory, "thirty")

        cold_backend = CpuReferenceBackend(settings)
        (cold,) = bench_creation(cold_backend, settings, path30, 1)
        warm = bench_creation(backend, settings, path30, args.runs)
        results["voice_creation_30s_sample"] = {
            "sample_s": round(len(long) / rate, 2),
            "warm_s": round(min(warm), 3),
            "warm_median_s": round(statistics.median(warm), 3),
            "cold_s_including_model_load": round(cold, 3),
        }
        print(
            f"voice creation from a {len(long) / rate:.0f} s sample: warm {min(warm):.2f} s, "
            f"cold (models loading) {cold:.2f} s"
        )
        profile = backend.analyse(
            load_sample(
                path30,
                sample_rate=rate,
                min_seconds=settings.min_sample_seconds,
                max_seconds=settings.max_sample_seconds,
                target_dbfs=settings.target_dbfs,
            )
        )
        results["generation"] = bench_generation(backend, profile, args.runs)
        results["similarity"] = bench_similarity(settings, speakers, directory)
        results["total_bench_s"] = round(time.perf_counter() - cold_start, 1)
        results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "voice.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'voice.json'}")


if __name__ == "__main__":
    main()
