"""Where a 30 s clone's time goes, warm, on clean and degraded samples (issue 26, item 5).

Each evaluation speaker's clone and held-out parts are joined and cut to 30 s, degraded
(bench/degrade.py) or not, written as a WAV and cloned the way the engine's clone job does
it: ``load_sample`` (decode, front end, voice activity, the two-speaker check) then the CPU
reference back end's ``analyse`` (pitch, embedding, the spectral mapping). The models are
loaded and one clone is made before the clock starts. Every stage is timed inclusively
(a stage inside another counts in both), per clone, in wall and CPU seconds.

    python bench/voice_clone_speed.py [--engine-root /work/main] [--label main]
        [--speakers librivox,alsa,slt,rms,awb] [--conditions clean,noise10_reverb]
        [--out bench/results/voice_clone_speed.json]

``--engine-root``: the checkout whose ``engine`` package is measured (default: this one), so
two versions can be timed by the same script on the same machine, one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]


def _paths(engine_root: Path) -> None:
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(engine_root))


class Stages:
    """Inclusive wall and CPU time per named stage, for the clone being measured."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def reset(self) -> None:
        self.wall.clear()
        self.cpu.clear()
        self.calls.clear()

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        fn: Callable[..., Any] = getattr(owner, attr)
        stages = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                stages.wall[name] += time.perf_counter() - w
                stages.cpu[name] += time.process_time() - c
                stages.calls[name] += 1

        setattr(owner, attr, timed)


def instrument(stages: Stages) -> None:
    from engine.voice import audio, frontend, parallel, piper_base, similarity, transcribe, world

    stages.wrap(audio, "decode", "decode")
    stages.wrap(frontend, "estimate_snr_db", "snr")
    stages.wrap(frontend.Denoiser, "__call__", "denoise")
    stages.wrap(audio, "speech_mask", "vad")
    stages.wrap(frontend, "trim_to_speech", "trim")
    stages.wrap(frontend, "measure_band", "band")
    stages.wrap(audio, "normalise", "normalise")
    stages.wrap(similarity.SpeakerEncoder, "partials", "speaker check (partials)")
    stages.wrap(similarity.SpeakerEncoder, "embed", "embeddings")
    stages.wrap(world, "speaker_stats", "speaker stats (pitch+envelope)")
    stages.wrap(world, "pitch", "pitch tracking")
    stages.wrap(world, "analyse", "WORLD analyse")
    stages.wrap(world, "synthesise", "WORLD synthesise")
    stages.wrap(transcribe.Transcriber, "transcribe", "whisper")
    stages.wrap(piper_base.PiperBase, "sentences", "piper readings")
    stages.wrap(parallel, "voiced_pairs", "DTW alignment")
    stages.wrap(parallel, "fit", "mapping fit")


@contextmanager
def _quiet() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def samples(names: list[str], conditions: list[str], seconds: float, directory: Path) -> list[Any]:
    import numpy as np

    from bench import degrade
    from bench import voice_quality as vq

    out = []
    for spk in vq.all_speakers(directory, only=names):
        joined = np.concatenate([spk.clone, np.zeros(int(0.3 * spk.sample_rate)), spk.held_out])
        while len(joined) < seconds * spk.sample_rate:
            joined = np.concatenate([joined, joined])
        base = np.asarray(joined[: int(seconds * spk.sample_rate)], dtype=np.float32)
        for condition in conditions:
            audio = (
                base
                if condition == "clean"
                else degrade.CONDITIONS[condition](base, spk.sample_rate)
            )
            path = vq.wav_file(audio, spk.sample_rate, directory / f"{spk.name}-{condition}.wav")
            out.append((spk.name, condition, path))
    return out


def clone_once(backend: Any, path: Path) -> Any:
    from engine.voice.audio import load_sample

    s = backend.settings
    sample = load_sample(
        path,
        sample_rate=backend.sample_rate,
        min_seconds=s.min_sample_seconds,
        max_seconds=s.max_sample_seconds,
        target_dbfs=s.target_dbfs,
        encoder=backend.encoder,
    )
    return sample, backend.analyse(sample)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-root", type=Path, default=HERE)
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--speakers", default="librivox,alsa,slt,rms,awb")
    parser.add_argument("--conditions", default="clean,noise10_reverb")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    _paths(args.engine_root.resolve())
    with _quiet():
        import engine
        from engine.voice.reference import CpuReferenceBackend
        from engine.voice.settings import VoiceSettings

        print(f"engine from {Path(engine.__file__).parent}", flush=True)
        stages = Stages()
        instrument(stages)
        backend = CpuReferenceBackend(VoiceSettings())
        with tempfile.TemporaryDirectory() as tmp:
            todo = samples(
                args.speakers.split(","), args.conditions.split(","), args.seconds, Path(tmp)
            )
            backend.warm_up()
            backend.transcriber._load()
            clone_once(backend, todo[0][2])  # warm: every model and code path touched
            load_start = os.getloadavg()
            rows = []
            for name, condition, path in todo:
                stages.reset()
                w, c = time.perf_counter(), time.process_time()
                sample, profile = clone_once(backend, path)
                wall, cpu = time.perf_counter() - w, time.process_time() - c
                report = sample.front_end
                rows.append(
                    {
                        "speaker": name,
                        "condition": condition,
                        "wall_s": round(wall, 2),
                        "cpu_s": round(cpu, 2),
                        "snr_db": None if report is None else report.snr_db,
                        "denoised": None if report is None else report.denoised,
                        "speech_s": round(sample.speech_seconds, 1),
                        "mapping": "mapping" in profile.params,
                        "median_f0_hz": profile.median_f0_hz,
                        "stages_wall_s": {k: round(v, 2) for k, v in stages.wall.items()},
                        "stages_cpu_s": {k: round(v, 2) for k, v in stages.cpu.items()},
                        "calls": dict(stages.calls),
                    }
                )
                print(
                    f"{name:<9}{condition:<16}{wall:6.2f} s wall {cpu:6.2f} s cpu  "
                    + "  ".join(f"{k} {v:.2f}" for k, v in sorted(stages.wall.items())),
                    flush=True,
                )
            load_end = os.getloadavg()
    walls = [r["wall_s"] for r in rows]
    cpus = [r["cpu_s"] for r in rows]
    stage_names = sorted({k for r in rows for k in r["stages_wall_s"]})
    summary = {
        "label": args.label,
        "engine_root": str(args.engine_root),
        "clones": len(rows),
        "wall_p50_s": round(pct(walls, 0.5), 2),
        "wall_p90_s": round(pct(walls, 0.9), 2),
        "cpu_p50_s": round(pct(cpus, 0.5), 2),
        "cpu_p90_s": round(pct(cpus, 0.9), 2),
        "by_condition": {
            cond: {
                "wall_p50_s": round(
                    pct([r["wall_s"] for r in rows if r["condition"] == cond], 0.5), 2
                ),
                "wall_p90_s": round(
                    pct([r["wall_s"] for r in rows if r["condition"] == cond], 0.9), 2
                ),
                "cpu_p50_s": round(
                    pct([r["cpu_s"] for r in rows if r["condition"] == cond], 0.5), 2
                ),
            }
            for cond in dict.fromkeys(r["condition"] for r in rows)
        },
        "stage_wall_mean_s": {
            k: round(statistics.fmean(r["stages_wall_s"].get(k, 0.0) for r in rows), 2)
            for k in stage_names
        },
        "stage_cpu_mean_s": {
            k: round(statistics.fmean(r["stages_cpu_s"].get(k, 0.0) for r in rows), 2)
            for k in stage_names
        },
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in load_end],
        "cpus": os.cpu_count(),
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    if args.out is not None:
        # Kept beside the earlier runs (under "runs", next to the file's "what").
        data = json.loads(args.out.read_text()) if args.out.exists() else {}
        data.setdefault("runs", {})[args.label] = summary
        args.out.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
