"""scripts/check_pip.py: only qwen-tts-hf's four known lines are let through."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts.check_pip import LEFT_OUT, unexpected

ROOT = Path(__file__).resolve().parents[2]


def test_the_known_lines_pass_and_any_other_fails() -> None:
    report = "\n".join(sorted(LEFT_OUT)) + "\n"
    assert unexpected(report) == []
    assert unexpected("No broken requirements found.\n") == []
    other = "foo 1.0 requires bar, which is not installed."
    assert unexpected(report + other + "\n") == [other]
    # Another version of the package is looked at again.
    newer = "qwen-tts-hf 0.2.0 requires torchaudio, which is not installed."
    assert unexpected(newer) == [newer]


def test_this_environment_passes() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/check_pip.py"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
