"""The qwen3 voice back end's speed on a GPU: real-time factor, first frame, memory.

By default nothing is downloaded: a Qwen3-TTS 12 Hz Base with random weights is built from
config (:mod:`engine.voice.random_qwen3`; ``--size full`` has the 1.7B model's sizes, the
talker checked against its published parameter count) and saved in a pulled model's
layout, then opened by the back end's own loading code and cloned from a synthetic voiced
clip. A random model speaks noise, but runs every step a trained one does (talker step,
the code predictor's 15 sub-steps per frame, speaker encoder, codec decoder); it speaks
until the length cap or a chance end-of-speech, so its speed per second of audio is the
real one. ``--model FOLDER`` measures a pulled model instead (real weights, real lengths):
the machine needs no network for either.

RTF = seconds of compute / seconds of audio (under 1: faster than real time). First frame
= seconds from the call until the first codec frame is generated (what a streaming decoder
could wait; qwen-tts 0.1.1 decodes the whole speech at the end, so today the reply waits
the whole wall time). ``bench/voice_gpu_qwen3.sh`` runs it on a GPU; ``--size tiny --device
cpu`` is the dry run that checks the script anywhere.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.voice_gpu import TEXTS, voiced_clip  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--model", type=Path, help="a pulled Qwen3-TTS 12 Hz Base folder")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each text")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/voice_gpu_qwen3.json")
    args = parser.parse_args()

    import torch
    import transformers

    from engine.voice.audio import Sample
    from engine.voice.neural import machine_placement
    from engine.voice.qwen3 import SAMPLE_RATE, Qwen3Backend
    from engine.voice.random_qwen3 import build_random_model
    from engine.voice.settings import VoiceSettings

    settings_values: dict[str, Any] = {
        "backend": "qwen3",
        "neural_device": args.device,
        "neural_dtype": args.dtype,
    }
    placement = machine_placement(VoiceSettings.model_validate(settings_values))
    with tempfile.TemporaryDirectory() as tmp:
        build_s = 0.0
        if args.model is not None:
            folder = args.model
            what = f"pulled model {folder}"
        else:
            started = time.monotonic()
            folder = build_random_model(
                Path(tmp) / f"qwen3-{args.size}",
                args.size,
                device=placement.device,
                dtype=placement.dtype,
            )
            build_s = time.monotonic() - started
            what = f"random weights built from config ({args.size})"
            if placement.device == "cuda":
                torch.cuda.empty_cache()
            print(f"built the {args.size} random model in {build_s:.1f} s", flush=True)
        if placement.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        settings = VoiceSettings.model_validate(settings_values | {"qwen3_model": str(folder)})
        backend = Qwen3Backend(settings)
        started = time.monotonic()
        model = backend.model()
        if model is None:
            raise SystemExit(f"the model did not load: {backend.unavailable}")
        load_s = time.monotonic() - started
        params = sum(p.numel() for p in model.wrapper.model.parameters())
        codec_params = sum(
            p.numel() for p in model.wrapper.model.speech_tokenizer.model.parameters()
        )
        print(
            f"{backend.describe()}; {params / 1e9:.2f} B parameters + codec "
            f"{codec_params / 1e6:.0f} M; loaded in {load_s:.1f} s",
            flush=True,
        )
        weights_gb = torch.cuda.memory_allocated() / 1e9 if placement.device == "cuda" else None
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
                "first_frame_s": round(first[0] if first else wall, 4),
            }

        run(TEXTS[0])  # warm-up: kernels, allocator, caches
        rows = [run(text) | {"repeat": r} for text in TEXTS for r in range(args.repeats)]
        for row in rows:
            print(json.dumps(row), flush=True)
        peak_gb = torch.cuda.max_memory_allocated() / 1e9 if placement.device == "cuda" else None
    audio = sum(r["audio_s"] for r in rows)
    wall = sum(r["wall_s"] for r in rows)
    result = {
        "what": f"qwen3 voice back end (Qwen3-TTS 12 Hz Base), {what}",
        "size": None if args.model is not None else args.size,
        "device": torch.cuda.get_device_name(0)
        if placement.device == "cuda"
        else platform.processor() or "cpu",
        "dtype": placement.dtype,
        "parameters": params,
        "codec_parameters": codec_params,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "build_s": round(build_s, 1),
        "load_s": round(load_s, 1),
        "gpu_memory_after_load_gb": None if weights_gb is None else round(weights_gb, 2),
        "peak_gpu_memory_gb": None if peak_gb is None else round(peak_gb, 2),
        "rtf_overall": round(wall / audio, 4),
        "rtf_median": statistics.median(r["rtf"] for r in rows),
        "first_frame_s_median": statistics.median(r["first_frame_s"] for r in rows),
        # The whole speech is decoded at the end: the reply's first audio is the wall time.
        "first_audio_s_median": statistics.median(r["wall_s"] for r in rows),
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"RTF {result['rtf_overall']} overall, first frame {result['first_frame_s_median']} s, "
        f"whole speech {result['first_audio_s_median']} s (medians) -> {args.out}"
    )


if __name__ == "__main__":
    main()
