"""Benchmark of the pocket back end (Kyutai Pocket TTS) with FULL-SIZE random weights.

No weights can be downloaded here, so the model is built from the language config packaged
in pocket-tts (the released model's sizes) with random weights, laid out as a pull lays it
out, and opened by the back end's own loading code. Its end-of-speech head is switched off
(a random head would stop at a random frame), so each sentence runs to the model's own
length cap for its token count: the timings are per frame, as a trained model's are.

Measured for one sentence, next to the CPU reference in the same run (the baseline: this
machine is shared, so only numbers from one run compare):
- first audio: from the call to the first decoded chunk, for a voice whose state is in
  memory (every use after the first) and for a new voice (the clip is heard first);
- real-time factor: compute seconds per second of speech, the whole sentence;
- CPU seconds of the process per second of speech (all its threads): less sensitive than
  wall time to other jobs on the machine;
- float32 with torch at one thread (pocket-tts's own setting) and at the machine's core
  count, process-wide;
- int8 dynamic quantization (``pocket_quantize``, the default on a CPU) with torch at the
  machine's core count process-wide (before) and with one intra-op thread in each of
  pocket-tts's two pipeline threads (``pocket_threads = 1``, the default since), in
  alternating runs so that both see the same machine load.

Writes bench/results/voice_pocket.json.

    python bench/voice.py --backend pocket [--runs 3]
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.voice.neural import Placement
from engine.voice.pocket import SAMPLE_RATE, PocketModel
from engine.voice.random_pocket import build_random_pocket
from engine.voice.reference import CpuReferenceBackend
from engine.voice.settings import VoiceSettings

RESULTS = Path(__file__).parent / "results"
SENTENCE = "The morning train was late again, so Maria walked the long way to the office."
CLIP_SECONDS = 10.0


def pocket_once(model: PocketModel, clip: np.ndarray, fresh_voice: bool) -> dict[str, float]:
    if fresh_voice:
        model._states.clear()
    stop = threading.Event()
    cpu = time.process_time()
    start = time.perf_counter()
    first = None
    samples = 0
    for chunk in model.stream(clip, SENTENCE, stop):
        if first is None:
            first = time.perf_counter() - start
        samples += chunk.size
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu
    seconds = samples / SAMPLE_RATE
    return {
        "first_audio_s": round(first or total, 3),
        "total_s": round(total, 3),
        "audio_s": round(seconds, 3),
        "rtf": round(total / seconds, 3),
        "cpu_s_per_audio_s": round(cpu / seconds, 3),
    }


def median_of(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}


def main(runs: int = 3, compare_only: bool = False) -> dict[str, Any]:
    """``compare_only``: the int8 before/after comparison and the baseline only, written to
    voice_pocket_threads.json (a quick rerun when the machine is quieter)."""
    import torch

    cores = os.cpu_count() or 1
    out: dict[str, Any] = {
        "machine": {
            "cpus": cores,
            "python": platform.python_version(),
            "processor": platform.machine(),
            "torch": torch.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "note": (
                "a 2-core machine shared with other jobs (see the load averages): absolute "
                "times are inflated; compare with the CPU reference measured in the same run"
            ),
        },
        "sentence": SENTENCE,
    }
    reference = CpuReferenceBackend(VoiceSettings())
    reference.warm_up()
    base = reference.base_speech(
        "When the sunlight strikes raindrops in the air, they act as a prism and form a "
        "rainbow. The rainbow is a division of white light into many beautiful colors."
    )
    import librosa

    clip = np.asarray(
        librosa.resample(base.audio, orig_sr=base.sample_rate, target_sr=SAMPLE_RATE),
        dtype=np.float32,
    )[: int(CLIP_SECONDS * SAMPLE_RATE)]
    from engine.voice.audio import Sample

    seconds = len(base.audio) / base.sample_rate
    profile = reference.analyse(Sample(base.audio, base.sample_rate, seconds, seconds))

    def baseline() -> dict[str, Any]:
        rows = []
        for _ in range(runs):
            cpu = time.process_time()
            start = time.perf_counter()
            speech = reference.synthesise(SENTENCE, profile)
            total = time.perf_counter() - start
            cpu = time.process_time() - cpu
            rows.append(
                {
                    "first_audio_s": round(total, 3),  # not streamed: the sentence first
                    "total_s": round(total, 3),
                    "audio_s": round(speech.seconds, 3),
                    "rtf": round(total / speech.seconds, 3),
                    "cpu_s_per_audio_s": round(cpu / speech.seconds, 3),
                }
            )
        return {"runs": rows, "median": median_of(rows)}

    out["cpu_reference_baseline"] = baseline()

    with tempfile.TemporaryDirectory(prefix="pocket-full-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        config = build_random_pocket(root, "full", "english")
        built = time.perf_counter() - started
        settings = VoiceSettings(
            backend="pocket",
            pocket_config=config,
            pocket_model=str(root / "kyutai--pocket-tts"),
            pocket_tokenizer=str(root / "kyutai--pocket-tts-without-voice-cloning"),
            pocket_eos_threshold=1e9,  # never stop early: random heads would at random
            pocket_quantize=False,  # float32 first; int8 below
            pocket_threads=0,  # torch's process-wide setting, set per row below
        )
        started = time.perf_counter()
        model = PocketModel(settings, Placement("cpu", "float32"))
        loaded = time.perf_counter() - started
        params = sum(p.numel() for p in model.model.parameters())
        out["pocket"] = {
            "config": "english (packaged in pocket-tts 4.0.1), random weights",
            "parameters": params,
            "build_random_weights_s": round(built, 2),
            "load_s": round(loaded, 2),
            "voice_clip_s": CLIP_SECONDS,
            "threads": {},
        }
        previous = torch.get_num_threads()
        for threads in [] if compare_only else sorted({1, cores}):
            torch.set_num_threads(threads)
            started = time.perf_counter()
            model._states.clear()
            model.state_for(clip)
            voice_state_s = time.perf_counter() - started
            pocket_once(model, clip, fresh_voice=False)  # warm-up
            warm = [pocket_once(model, clip, fresh_voice=False) for _ in range(runs)]
            fresh = [pocket_once(model, clip, fresh_voice=True) for _ in range(runs)]
            out["pocket"]["threads"][str(threads)] = {
                "voice_state_from_10s_clip_s": round(voice_state_s, 3),
                "known_voice": {"runs": warm, "median": median_of(warm)},
                "new_voice": {"runs": fresh, "median": median_of(fresh)},
            }
        # int8 dynamic quantization (the default on a CPU), torch at the machine's core
        # count process-wide (what a worker has), side by side in alternating runs: the
        # settings before (pocket-tts's two pipeline threads at torch's process-wide count)
        # and after (pocket_threads = 1: one intra-op thread in each of them).
        torch.set_num_threads(cores)
        compared: dict[str, Any] = {}
        models: dict[str, PocketModel] = {}
        for label, pinned in (("before_process_wide_threads", 0), ("after_pocket_threads_1", 1)):
            started = time.perf_counter()
            models[label] = PocketModel(
                settings.model_copy(update={"pocket_quantize": True, "pocket_threads": pinned}),
                Placement("cpu", "float32"),
            )
            compared[label] = {
                "pocket_threads": pinned,
                "torch_threads_process_wide": cores,
                "load_s": round(time.perf_counter() - started, 2),
            }
            models[label].state_for(clip)
            pocket_once(models[label], clip, fresh_voice=False)  # warm-up
        rows: dict[str, list[dict[str, float]]] = {label: [] for label in models}
        for _ in range(max(runs, 5)):
            for label, model_ in models.items():
                rows[label].append(pocket_once(model_, clip, fresh_voice=False))
        for label in models:
            compared[label]["known_voice"] = {"runs": rows[label], "median": median_of(rows[label])}
            fresh = [pocket_once(models[label], clip, fresh_voice=True) for _ in range(runs)]
            compared[label]["new_voice"] = {"runs": fresh, "median": median_of(fresh)}
        out["pocket"]["int8_compared"] = compared
        torch.set_num_threads(previous)
    # The load changed meanwhile: the baseline again, after.
    out["cpu_reference_baseline_after"] = baseline()
    out["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    name = "voice_pocket_threads.json" if compare_only else "voice_pocket.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
