"""What a person sees when `make run` starts the sandbox: the few lines they need (what
runs where, which device each back end uses, what to open), and no warning that does not
apply to a simulated Discord; library details only at DEBUG."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.sandbox import sandbox_logging
from tests.waiting import CEILING_S

pytest.importorskip("aiohttp")
ROOT = Path(__file__).parents[2]

# Lines that used to greet every sandbox start; none applies there, or they are details.
NOISE = (
    "PyNaCl is not installed",
    "davey is not installed",
    "Guilds intent seems to be disabled",
    "logging in using static token",
    "synced ",
    "may take up to an hour",
    "alembic",
    "huey.consumer",
    "The following commands are available",
    "settings changed",
)


def _wait_for(predicate: object) -> bool:
    """Whether ``predicate()`` came true before :data:`CEILING_S` (which only ends a hang)."""
    deadline = time.monotonic() + CEILING_S
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_the_sandbox_start_shows_what_runs_where_and_no_noise(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[engine]\nport = 0\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DISCORD_TOKEN", "TADA_CONFIG", "TADA_MODE", "TADA_SANDBOX")
    }
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "--sandbox-port", "0"],
            cwd=tmp_path,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        started = _wait_for(lambda: "Open:" in out.read_text())
        # The device report comes from the worker's background warm-up, just after.
        reported = _wait_for(lambda: "image: " in err.read_text())
        # What a person reads at start; lines about stopping (a model still loading when
        # Ctrl+C comes, as on a loaded machine) come after and are not start-up output.
        at_start = err.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=CEILING_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log, page = err.read_text(), out.read_text()
    assert started, log + page
    assert reported, log
    for noise in NOISE:
        assert noise not in log, f"{noise!r} in the start-up output:\n{log}"
    assert "embedded Ta-da engine at http://127.0.0.1:" in log
    # The default back end is "auto": Pocket TTS once pulled, the CPU reference until then.
    assert "voice: pocket (Pocket TTS" in log and "using cpu-reference" in log, log
    assert "on cpu, float32" in log
    assert "image: the tiny random test model (draws noise" in log
    assert "voice: loading the models in the background" in log
    assert "Traceback" not in log
    lines = [line for line in at_start.splitlines() if line.strip()]
    assert len(lines) <= 8, at_start
    assert "Open:          http://127.0.0.1:" in page
    assert proc.returncode == 0, log
    assert "Ta-da sandbox: stopped." in page


def test_sandbox_details_are_debug_lines_only_while_the_sandbox_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = logging.getLogger("discord.client")
    with caplog.at_level(logging.INFO), sandbox_logging():
        client.warning("PyNaCl is not installed, voice will NOT be supported")
        client.warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"]
    caplog.clear()
    with caplog.at_level(logging.DEBUG), sandbox_logging():
        client.warning("PyNaCl is not installed, voice will NOT be supported")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "PyNaCl is not installed, voice will NOT be supported")
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        client.warning("PyNaCl is not installed, voice will NOT be supported")
    assert [r.levelname for r in caplog.records] == ["WARNING"]  # outside the sandbox
