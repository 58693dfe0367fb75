#!/usr/bin/env python3
"""``pip check``, less the requirements a package declares that we leave out on purpose.

One package is installed without its declared dependencies (``make setup``: ``pip install
--no-deps``): ``qwen-tts-hf``, the GPU voice back end's model code. It declares torchaudio,
which has no build for our torch, sox and gradio, none of which the 12 Hz models it runs
import, and an exact accelerate pin older than ours (engine/voice/qwen3.py). Those four
lines are expected; any other line ``pip check`` prints fails, as does a line for a version
of the package other than the pinned one, so a new pin is looked at again.

    python scripts/check_pip.py
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

# The exact lines `pip check` prints for what is left out on purpose.
LEFT_OUT: frozenset[str] = frozenset(
    {
        "qwen-tts-hf 0.1.1.post1 requires gradio, which is not installed.",
        "qwen-tts-hf 0.1.1.post1 requires sox, which is not installed.",
        "qwen-tts-hf 0.1.1.post1 requires torchaudio, which is not installed.",
        "qwen-tts-hf 0.1.1.post1 has requirement accelerate==1.12.0, but you have accelerate "
        "1.15.0.",
    }
)


def unexpected(report: str) -> list[str]:
    """The lines of a ``pip check`` report that are not left out on purpose."""
    return [
        line
        for line in report.splitlines()
        if line.strip()
        and line.strip() not in LEFT_OUT
        and line.strip() != "No broken requirements found."
    ]


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    done = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False
    )
    problems = unexpected(done.stdout + done.stderr)
    if problems:
        print("\n".join(problems))
        return 1
    print("pip check: the installed dependencies agree (qwen-tts-hf's declared extras left out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
