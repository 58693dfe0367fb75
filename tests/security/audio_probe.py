"""One hostile recording through one decoder, in a fresh process, measured.

``python -m tests.security.audio_probe STAGE PATH FILE_NAME`` prints one JSON line:
the outcome, this process's peak RSS growth over its baseline (bench/hostile.py's 2 ms
sampler and ``ru_maxrss``), the peak RSS of the largest decoder child it ran (ffmpeg,
``RUSAGE_CHILDREN``), and the CPU seconds of the whole tree. Stages:

- ``engine-decode``: the engine's :func:`engine.voice.audio.decode` at 24 kHz, 300 s;
- ``engine-detect``: the engine's container check alone (:func:`engine.voice.container.detect`);
- ``bot-check``: the bot's :func:`bot.media.check_audio` on the file's bytes.

:func:`tests.security.audio_hostile.measure` runs it and kills the tree past a bound.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def probe(stage: str, path: Path, file_name: str) -> dict[str, Any]:
    import bot.media
    import engine.voice.audio
    import engine.voice.container
    from bench.hostile import PeakRss

    data = path.read_bytes() if stage == "bot-check" else b""
    cpu0 = _cpu()
    started = time.perf_counter()
    watch = PeakRss()
    watch.start()
    try:
        if stage == "engine-decode":
            audio = engine.voice.audio.decode(path, 24000, 300.0)
            outcome = f"decoded {len(audio) / 24000:.1f} s"
        elif stage == "engine-detect":
            with path.open("rb") as fh:
                outcome = f"accepted as {engine.voice.container.detect(fh).value}"
        elif stage == "bot-check":
            info = bot.media.check_audio(data, file_name)
            outcome = f"accepted: {info.duration_seconds:.1f} s"
        else:
            raise SystemExit(f"unknown stage {stage}")
    except (
        engine.voice.audio.SampleRejected,
        engine.voice.container.ContainerRefused,
        bot.media.MediaRejected,
    ) as exc:
        outcome = f"refused ({type(exc).__name__}): {exc}"
    except BaseException as exc:  # what the test must never see: reported, not raised
        outcome = f"raised {type(exc).__name__}: {str(exc)[:200]}"
    growth = watch.finish()
    return {
        "outcome": outcome,
        "self_growth_mb": growth,
        "decoder_peak_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "cpu_s": round(_cpu() - cpu0, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], Path(sys.argv[2]), sys.argv[3])), flush=True)
