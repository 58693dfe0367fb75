#!/usr/bin/env python3
"""Compile librosa's pYIN once, before the test passes run side by side.

pYIN (the tests' independent pitch judge: bench/voice_quality.py's ``pyin_median_f0``)
runs on numba functions that librosa compiles on first use and caches beside the package.
In a fresh environment every test process compiled them at once (about 36 CPU s each), and
one xdist worker crashed loading the cache another process was writing (a segmentation
fault in ``librosa.util.localmin``). Compiled here once, in one process, the passes only
read the cache. With the cache already made this takes a few seconds.

    python scripts/warm_numba.py
"""

from __future__ import annotations

import time

import numpy as np


def main() -> None:
    import librosa

    start = time.perf_counter()
    # The judge's own call: float32 audio at 16 kHz, the same frame and hop.
    tone = np.sin(2 * np.pi * 120.0 * np.arange(16000) / 16000).astype(np.float32)
    f0, _, _ = librosa.pyin(
        tone, fmin=50.0, fmax=500.0, sr=16000, frame_length=1024, hop_length=160
    )
    assert np.nanmedian(f0) > 0
    seconds = time.perf_counter() - start
    print(f"numba: librosa's pYIN ready (compiled, or read from its cache) in {seconds:.1f} s")


if __name__ == "__main__":
    main()
