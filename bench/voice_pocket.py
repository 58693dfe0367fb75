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

- ``variants_compared``: float32 against the int8 settings (``pocket_quantize`` "backbone",
  pocket-tts's own, and "all", which adds the flow head and the codec decoder's transformer),
  each with ``pocket_threads`` 0 or 1, in alternating rounds (each round runs every variant
  once, so all see the same load), for one sentence and for three, next to the CPU
  reference's baseline for the same texts; every run records the 1-minute load average.
  With ``pocket_threads = 1`` the generation thread's and the decoding thread's own CPU
  time are counted too (``thread_time``): the larger of the two per second of speech is
  the real-time factor the two threads would reach on two otherwise idle cores (they run
  side by side, one core each), an estimate this shared machine cannot measure directly;
- ``int8_vs_float``: how far int8 moves the output from float32 on the same random weights
  (the same latents through the codec decoder; the same backbone output through the flow
  head), as signal-to-noise ratios. Random weights say little about trained ones: the
  effect on speech must be re-measured with the released weights.

Writes bench/results/voice_pocket.json.

    python bench/voice.py --backend pocket [--runs 3] [--variants-only]
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
THREE_SENTENCES = (
    f"{SENTENCE} She passed the bakery on the corner, where the smell of fresh bread drifted "
    "into the street. A delivery van stopped beside her, and the driver asked for directions "
    "to the old library."
)
CLIP_SECONDS = 10.0
# variants_compared: (label, pocket_quantize, pocket_threads).
VARIANTS = (
    ("float32_threads_1", "off", 1),
    ("int8_backbone_threads_0", "backbone", 0),  # the defaults before this comparison
    ("int8_backbone_threads_1", "backbone", 1),
    ("int8_all_threads_0", "all", 0),
    ("int8_all_threads_1", "all", 1),
)
PIPELINE = ("_autoregressive_generation", "_decode_audio_worker")


def revalidated(settings: VoiceSettings, changes: dict[str, Any]) -> VoiceSettings:
    """``settings`` with ``changes``, validated (model_copy(update=...) would not convert
    them: "off" would stay a string, true would not mean "backbone")."""
    return VoiceSettings.model_validate({**settings.model_dump(), **changes})


def count_thread_cpu(model: PocketModel) -> dict[str, float]:
    """Wrap pocket-tts's two pipeline threads' functions (over any pinning) to add up each
    thread's own CPU seconds (its OpenMP workers, with pocket_threads = 0, not included)."""
    spent = dict.fromkeys(PIPELINE, 0.0)

    def counted(name: str) -> Any:
        run = getattr(model.model, name)

        def in_thread(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return run(*args, **kwargs)
            finally:
                spent[name] += time.thread_time() - start

        return in_thread

    for name in PIPELINE:
        setattr(model.model, name, counted(name))
    return spent


def pocket_once(
    model: PocketModel,
    clip: np.ndarray,
    fresh_voice: bool,
    text: str = SENTENCE,
    spent: dict[str, float] | None = None,
) -> dict[str, float]:
    if fresh_voice:
        model._states.clear()
    stop = threading.Event()
    before = dict(spent or {})
    cpu = time.process_time()
    start = time.perf_counter()
    first = None
    samples = 0
    for chunk in model.stream(clip, text, stop):
        if first is None:
            first = time.perf_counter() - start
        samples += chunk.size
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu
    seconds = samples / SAMPLE_RATE
    row = {
        "first_audio_s": round(first or total, 3),
        "total_s": round(total, 3),
        "audio_s": round(seconds, 3),
        "rtf": round(total / seconds, 3),
        "cpu_s_per_audio_s": round(cpu / seconds, 3),
    }
    if spent is not None and model.settings.pocket_threads == 1:
        generation = (spent[PIPELINE[0]] - before[PIPELINE[0]]) / seconds
        decoding = (spent[PIPELINE[1]] - before[PIPELINE[1]]) / seconds
        row["generation_thread_cpu_s_per_audio_s"] = round(generation, 3)
        row["decoding_thread_cpu_s_per_audio_s"] = round(decoding, 3)
        row["rtf_two_idle_cores_estimate"] = round(max(generation, decoding), 3)
    row["load_1min"] = round(os.getloadavg()[0], 2)
    return row


def median_of(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}


def snr_db(reference: Any, other: Any) -> float:
    """Signal-to-noise ratio of ``other`` against ``reference`` (higher: closer)."""
    noise = float(((other - reference) ** 2).sum())
    signal = float((reference**2).sum())
    return round(10 * float(np.log10(signal / max(noise, 1e-30))), 1)


def int8_vs_float(models: dict[str, PocketModel], frames: int = 24) -> dict[str, Any]:
    """How far each int8 variant's parts move the output from float32's, on the same
    inputs: the flow head's latent for the same backbone outputs and noise, and the codec
    decoder's audio for the same latents (decoded a frame at a time, as in a stream)."""
    import torch
    from pocket_tts.modules.stateful_module import increment_steps, init_states

    torch.manual_seed(1)
    ldim = models["off"].model.flow_lm.ldim
    dim = models["off"].model.flow_lm.dim
    latents = torch.randn(1, frames, ldim)
    conditions = torch.randn(frames, dim)
    noise = torch.randn(frames, ldim) * 0.3**0.5
    out: dict[str, Any] = {}
    reference: dict[str, Any] = {}
    for mode, model in models.items():
        tts = model.model
        with torch.inference_mode():
            flow = tts.flow_lm.flow_net(
                conditions, torch.zeros(frames, 1), torch.ones(frames, 1), noise
            )
            steps = int(tts.mimi.encoder_frame_rate / tts.mimi.frame_rate)
            state = init_states(tts.mimi, batch_size=1, sequence_length=frames * steps)
            audio = []
            for i in range(frames):
                audio.append(tts.mimi.decode_from_latent(latents[:, i : i + 1], state))
                increment_steps(tts.mimi, state, increment=steps)
            decoded = torch.cat(audio, dim=-1)
        if mode == "off":
            reference = {"flow": flow, "audio": decoded}
            continue
        out[mode] = {
            "flow_head_latent_snr_db": snr_db(reference["flow"], flow),
            "codec_decoder_audio_snr_db": snr_db(reference["audio"], decoded),
        }
    out["note"] = (
        "random weights: the codec decoder's transformer adds its output through a layer "
        "scale of 0.01, so its int8 error barely reaches the audio here; trained weights "
        "differ. Re-measure the speech (WER, speaker similarity) with the released weights."
    )
    return out


def main(
    runs: int = 3, compare_only: bool = False, variants_only: bool = False, size: str = "full"
) -> dict[str, Any]:
    """``compare_only``: the int8 before/after comparison and the baseline only, written to
    voice_pocket_threads.json (a quick rerun when the machine is quieter). ``variants_only``:
    ``variants_compared`` and ``int8_vs_float`` only, merged into voice_pocket.json (the
    other sections kept from the last full run). ``size`` "tiny": a smoke test of this
    script on the tests' tiny model, written nowhere."""
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

    def baseline(text: str = SENTENCE) -> dict[str, Any]:
        rows = []
        for _ in range(runs):
            cpu = time.process_time()
            start = time.perf_counter()
            speech = reference.synthesise(text, profile)
            total = time.perf_counter() - start
            cpu = time.process_time() - cpu
            rows.append(
                {
                    "first_audio_s": round(total, 3),  # not streamed: the sentence first
                    "total_s": round(total, 3),
                    "audio_s": round(speech.seconds, 3),
                    "rtf": round(total / speech.seconds, 3),
                    "cpu_s_per_audio_s": round(cpu / speech.seconds, 3),
                    "load_1min": round(os.getloadavg()[0], 2),
                }
            )
        return {"runs": rows, "median": median_of(rows)}

    if not variants_only:
        out["cpu_reference_baseline"] = baseline()

    with tempfile.TemporaryDirectory(prefix="pocket-full-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        config = build_random_pocket(root, "tiny" if size == "tiny" else "full", "english")
        built = time.perf_counter() - started
        settings = VoiceSettings(
            backend="pocket",
            pocket_config=config,
            pocket_model=str(root / "kyutai--pocket-tts"),
            pocket_tokenizer=str(root / "kyutai--pocket-tts-without-voice-cloning"),
            pocket_eos_threshold=1e9,  # never stop early: random heads would at random
            pocket_quantize="off",  # float32 first; int8 below
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
        for threads in [] if compare_only or variants_only else sorted({1, cores}):
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
        if not variants_only:
            out["pocket"]["int8_compared"] = int8_compared(settings, clip, runs, cores)
        if not compare_only:
            out["pocket"]["variants_compared"] = variants_compared(settings, clip, runs, baseline)
            out["pocket"]["int8_vs_float"] = int8_vs_float(
                {
                    mode: PocketModel(
                        revalidated(settings, {"pocket_quantize": mode}),
                        Placement("cpu", "float32"),
                    )
                    for mode in ("off", "backbone", "all")
                }
            )
        torch.set_num_threads(previous)
    # The load changed meanwhile: the baseline again, after.
    out["cpu_reference_baseline_after"] = baseline()
    out["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))
    if size == "tiny":
        return out
    RESULTS.mkdir(exist_ok=True)
    name = "voice_pocket_threads.json" if compare_only else "voice_pocket.json"
    if variants_only and (RESULTS / name).is_file():
        kept = json.loads((RESULTS / name).read_text())
        kept["machine_variants"] = out["machine"]
        kept["cpu_reference_baseline_variants_after"] = out["cpu_reference_baseline_after"]
        kept.setdefault("pocket", {}).update(
            {k: out["pocket"][k] for k in ("variants_compared", "int8_vs_float")}
        )
        out = kept
    (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")
    return out


def variants_compared(
    settings: VoiceSettings, clip: np.ndarray, runs: int, baseline: Any
) -> dict[str, Any]:
    """Every variant once a round, ``runs`` rounds, for one sentence and for three."""
    compared: dict[str, Any] = {}
    models: dict[str, PocketModel] = {}
    spent: dict[str, dict[str, float]] = {}
    for label, mode, threads in VARIANTS:
        started = time.perf_counter()
        models[label] = PocketModel(
            revalidated(settings, {"pocket_quantize": mode, "pocket_threads": threads}),
            Placement("cpu", "float32"),
        )
        compared[label] = {
            "pocket_quantize": mode,
            "pocket_threads": threads,
            "load_s": round(time.perf_counter() - started, 2),
        }
        spent[label] = count_thread_cpu(models[label])
        models[label].state_for(clip)
        pocket_once(models[label], clip, fresh_voice=False)  # warm-up
    for key, text in (("one_sentence", SENTENCE), ("three_sentences", THREE_SENTENCES)):
        rows: dict[str, list[dict[str, float]]] = {label: [] for label in models}
        for _ in range(runs):
            for label, model in models.items():
                rows[label].append(
                    pocket_once(model, clip, fresh_voice=False, text=text, spent=spent[label])
                )
        for label in models:
            compared[label][key] = {"runs": rows[label], "median": median_of(rows[label])}
        compared[f"cpu_reference_baseline_{key}"] = baseline(text)
    compared["texts"] = {"one_sentence": SENTENCE, "three_sentences": THREE_SENTENCES}
    return compared


def int8_compared(
    settings: VoiceSettings, clip: np.ndarray, runs: int, cores: int
) -> dict[str, Any]:
    """int8 (pocket-tts's own) with torch's process-wide threads against pocket_threads = 1,
    in alternating runs."""
    compared: dict[str, Any] = {}
    models: dict[str, PocketModel] = {}
    for label, pinned in (("before_process_wide_threads", 0), ("after_pocket_threads_1", 1)):
        started = time.perf_counter()
        models[label] = PocketModel(
            revalidated(settings, {"pocket_quantize": "backbone", "pocket_threads": pinned}),
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
    return compared


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 3,
        variants_only="--variants-only" in sys.argv,
        size="tiny" if "--tiny" in sys.argv else "full",
    )
