"""The neural voice back end's speed: real-time factor and first-audio latency.

Nothing is downloaded: a VibeVoice with random weights is built from config
(:mod:`engine.voice.random_model`; ``--size full`` has the published 1.5B model's sizes)
and saved in a pulled model's layout, then opened by the back end's own loading code and
cloned from a synthetic voiced clip. A random model speaks noise, but runs every step a
trained one does (LM step, its classifier-free-guidance twin, diffusion head, acoustic
decoder, semantic encoder per frame) until the length cap, so its speed is the real one.

RTF = seconds of compute / seconds of audio (under 1: faster than real time). First audio
= seconds from the call until the first audio frame is decoded (what a streaming reply
would wait). ``bench/voice_gpu.sh`` runs it on a GPU; ``--size tiny --device cpu`` is the
dry run that checks the script anywhere.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXTS = [
    "Hello, and welcome to the server.",
    "The old lighthouse keeper climbed the stairs every evening to light the lamp, "
    "and ships far out at sea counted on him.",
    "When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow. "
    "The rainbow is a division of white light into many beautiful colors. These take the "
    "shape of a long round arch, with its path high above, and its two ends apparently "
    "beyond the horizon.",
]


def voiced_clip(seconds: float, rate: int) -> Any:
    """A speech-like test clip: a gliding harmonic voice, syllable-rate amplitude."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 25 * np.sin(2 * np.pi * 0.4 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3.5 * t)
    audio = voice * envelope
    return (0.3 * audio / np.abs(audio).max()).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    parser.add_argument("--steps", type=int, default=10, help="diffusion steps per frame")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each text")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/voice_gpu.json")
    args = parser.parse_args()

    import torch
    import transformers

    from engine.voice.audio import Sample
    from engine.voice.neural import SAMPLE_RATE, NeuralBackend, machine_placement
    from engine.voice.random_model import build_random_model
    from engine.voice.settings import VoiceSettings

    settings_values: dict[str, Any] = {
        "backend": "neural",
        "neural_device": args.device,
        "neural_dtype": args.dtype,
        "neural_diffusion_steps": args.steps,
    }
    placement = machine_placement(VoiceSettings.model_validate(settings_values))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        folder = build_random_model(
            Path(tmp) / f"vibevoice-{args.size}",
            args.size,
            device=placement.device,
            dtype=placement.dtype,
        )
        build_s = time.monotonic() - started
        if placement.device == "cuda":
            torch.cuda.empty_cache()
        print(f"built the {args.size} random model in {build_s:.1f} s", flush=True)
        settings = VoiceSettings.model_validate(settings_values | {"neural_model": str(folder)})
        backend = NeuralBackend(settings)
        started = time.monotonic()
        model = backend.model()
        if model is None:
            raise SystemExit(f"the model did not load: {backend.unavailable}")
        load_s = time.monotonic() - started
        params = sum(p.numel() for p in model.model.parameters())
        print(f"{backend.describe()}; {params / 1e9:.2f} B parameters; loaded in {load_s:.1f} s")
        clip = voiced_clip(settings.neural_reference_seconds, SAMPLE_RATE)
        seconds = len(clip) / SAMPLE_RATE
        profile = backend.analyse(Sample(clip, SAMPLE_RATE, seconds, seconds))

        def sync() -> None:
            if placement.device == "cuda":
                torch.cuda.synchronize()

        def run(text: str) -> dict[str, float]:
            first: list[float] = []
            sync()
            start = time.perf_counter()

            def progress(done: float) -> None:
                if not first:
                    sync()
                    first.append(time.perf_counter() - start)

            speech = backend.synthesise(text, profile, progress)
            sync()
            wall = time.perf_counter() - start
            return {
                "chars": len(text),
                "audio_s": round(speech.seconds, 3),
                "wall_s": round(wall, 3),
                "rtf": round(wall / max(speech.seconds, 1e-6), 4),
                "first_audio_s": round(first[0] if first else wall, 4),
            }

        run(TEXTS[0])  # warm-up: kernels, allocator, caches
        rows = [run(text) | {"repeat": r} for text in TEXTS for r in range(args.repeats)]
        for row in rows:
            print(json.dumps(row), flush=True)
        peak_gb = torch.cuda.max_memory_allocated() / 1e9 if placement.device == "cuda" else None
    audio = sum(r["audio_s"] for r in rows)
    wall = sum(r["wall_s"] for r in rows)
    result = {
        "what": "neural voice back end (VibeVoice) with random weights built from config",
        "size": args.size,
        "device": torch.cuda.get_device_name(0)
        if placement.device == "cuda"
        else platform.processor() or "cpu",
        "dtype": placement.dtype,
        "diffusion_steps": args.steps,
        "parameters": params,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "build_s": round(build_s, 1),
        "load_s": round(load_s, 1),
        "peak_gpu_memory_gb": None if peak_gb is None else round(peak_gb, 2),
        "rtf_overall": round(wall / audio, 4),
        "rtf_median": statistics.median(r["rtf"] for r in rows),
        "first_audio_s_median": statistics.median(r["first_audio_s"] for r in rows),
        "first_audio_s_max": max(r["first_audio_s"] for r in rows),
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"RTF {result['rtf_overall']} overall, first audio {result['first_audio_s_median']} s "
        f"(median) -> {args.out}"
    )


if __name__ == "__main__":
    main()
