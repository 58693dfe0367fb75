"""First audio of a voice's first sentence after an engine restart, with FULL-SIZE random
Pocket TTS weights: the voice's state heard again from its 10 s clip (before: states were
kept in memory only) against read back from the engine's storage (after:
engine/voice/pocket_states.py, the data directory's LocalStorage here).

One model (the defaults on a CPU: int8 "backbone", pocket_threads 0) serves both: a restart
is simulated by emptying its in-memory states before each run, so what differs is only
where the state comes from. The two kinds of run alternate (this machine is shared: both see
the same load); every run records wall and process CPU seconds to the first audio chunk and
the 1-minute load average. The state file's size and the time to read and check it alone
are recorded too.

Writes bench/results/voice_pocket_restart.json.

    python bench/voice_pocket_restart.py [runs]
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

from engine.storage.local import LocalStorage
from engine.voice.neural import Placement
from engine.voice.pocket import SAMPLE_RATE, PocketModel, state_identity
from engine.voice.pocket_states import StoredStates, clip_id
from engine.voice.random_pocket import build_random_pocket
from engine.voice.settings import VoiceSettings

RESULTS = Path(__file__).parent / "results"
SENTENCE = "The morning train was late again, so Maria walked the long way to the office."
CLIP_SECONDS = 10.0


def first_audio(model: PocketModel, clip: np.ndarray) -> dict[str, float]:
    """Wall and CPU seconds from the call to the first decoded chunk, memory emptied first
    (a restarted engine)."""
    model._states.clear()
    stop = threading.Event()
    cpu = time.process_time()
    start = time.perf_counter()
    chunks = model.stream(clip, SENTENCE, stop)
    next(iter(chunks))
    row = {
        "first_audio_s": round(time.perf_counter() - start, 3),
        "first_audio_cpu_s": round(time.process_time() - cpu, 3),
        "load_1min": round(os.getloadavg()[0], 2),
    }
    stop.set()
    close: Any = getattr(chunks, "close", None)
    if close is not None:
        close()
    return row


def median_of(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}


def main(runs: int = 3, size: str = "full") -> dict[str, Any]:
    import librosa
    import torch

    from engine.voice.reference import CpuReferenceBackend

    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "note": "a 2-core machine shared with other jobs: see each run's load average",
        },
        "sentence": SENTENCE,
        "voice_clip_s": CLIP_SECONDS,
    }
    # A clip of speech: the CPU reference's base voice reading two sentences.
    reference = CpuReferenceBackend(VoiceSettings())
    base = reference.base_speech(
        "When the sunlight strikes raindrops in the air, they act as a prism and form a "
        "rainbow. The rainbow is a division of white light into many beautiful colors."
    )
    clip = np.asarray(
        librosa.resample(base.audio, orig_sr=base.sample_rate, target_sr=SAMPLE_RATE),
        dtype=np.float32,
    )[: int(CLIP_SECONDS * SAMPLE_RATE)]
    with tempfile.TemporaryDirectory(prefix="pocket-restart-") as tmp:
        root = Path(tmp)
        config = build_random_pocket(root / "models", "tiny" if size == "tiny" else "full")
        settings = VoiceSettings(
            backend="pocket",
            pocket_config=config,
            pocket_model=str(root / "models" / "kyutai--pocket-tts"),
            pocket_tokenizer=str(root / "models" / "kyutai--pocket-tts-without-voice-cloning"),
            pocket_eos_threshold=1e9,
        )
        placement = Placement("cpu", "float32")
        states = StoredStates(LocalStorage(root / "files"), state_identity(settings, placement))
        model = PocketModel(settings, placement, states)
        model.state_for(clip)  # warm-up (first call paths); computed and stored
        first_audio(model, clip)
        before: list[dict[str, float]] = []
        after: list[dict[str, float]] = []
        for _ in range(runs):
            model.states = None  # before: memory only, the clip heard again
            before.append(first_audio(model, clip))
            model.states = states  # after: read back from the file stored above
            after.append(first_audio(model, clip))
        key = states.key_for(clip)
        size_bytes = (root / "files" / "artifacts" / key).stat().st_size
        started = time.perf_counter()
        cpu = time.process_time()
        assert states.load(clip_id(clip), model._template) is not None
        out["state_file"] = {
            "bytes": size_bytes,
            "read_and_check_s": round(time.perf_counter() - started, 3),
            "read_and_check_cpu_s": round(time.process_time() - cpu, 3),
        }
    out["before_state_heard_again"] = {"runs": before, "median": median_of(before)}
    out["after_state_read_back"] = {"runs": after, "median": median_of(after)}
    out["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))
    if size != "tiny":
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "voice_pocket_restart.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(int(args[0]) if args else 3, size="tiny" if "--tiny" in sys.argv else "full")
