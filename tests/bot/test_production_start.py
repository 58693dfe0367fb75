"""Production start-up: one start lists every missing secret, with the command for each,
and exits 2 without a traceback; the no-token hint names what the operator actually set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

from bot.config import production_problems
from tests.waiting import CEILING_S

ROOT = Path(__file__).parents[2]
SECRETS = ("DISCORD_TOKEN", "TADA_BOT_ENCRYPTION_KEY", "TADA_ENGINE_SECRET_KEY")


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (*SECRETS, "TADA_CONFIG", "TADA_MODE", "TADA_SANDBOX", "TADA_API_URL")
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=CEILING_S,
        check=False,
    )


def test_one_production_start_lists_every_missing_secret_without_a_traceback(
    tmp_path: Path,
) -> None:
    done = _run(["-m", "bot"], tmp_path, _env(TADA_MODE="production"))
    assert done.returncode == 2
    err = done.stderr
    assert "Traceback" not in err and "Traceback" not in done.stdout
    assert "production mode (TADA_MODE=production)" in err
    for name in SECRETS:
        assert f"  {name}: not set" in err
    # The command that makes each secret is right there.
    assert "Fernet.generate_key()" in err
    assert "secrets.token_urlsafe(48)" in err
    assert "discord.com/developers/applications" in err
    assert "--no-sandbox" not in err
    assert not (tmp_path / "data").exists()  # nothing was started


def test_the_engine_alone_lists_its_missing_secret_without_a_traceback(tmp_path: Path) -> None:
    done = _run(
        ["-m", "engine.cli", "serve"],
        tmp_path,
        _env(TADA_MODE="production", TADA_ENGINE_SECRET_KEY="change-me"),
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "TADA_ENGINE_SECRET_KEY: a placeholder" in done.stderr
    assert "secrets.token_urlsafe(48)" in done.stderr


def test_the_no_token_hint_names_the_switch_that_was_set(tmp_path: Path) -> None:
    by_env = _run(["-m", "bot"], tmp_path, _env(TADA_SANDBOX="0"))
    assert by_env.returncode == 2
    assert "TADA_SANDBOX=0 is set" in by_env.stderr
    assert "--no-sandbox" not in by_env.stderr
    by_flag = _run(["-m", "bot", "--no-sandbox"], tmp_path, _env())
    assert by_flag.returncode == 2
    assert "Without --no-sandbox" in by_flag.stderr
    assert "TADA_SANDBOX" not in by_flag.stderr


def test_production_set_in_the_config_file_is_named_as_such() -> None:
    source, problems = production_problems({"general": {"mode": "production"}}, {})
    assert source == 'general.mode = "production" in the config file'
    assert [p.env for p in problems] == list(SECRETS)


def test_real_secrets_leave_nothing_to_report() -> None:
    keys = [Fernet.generate_key().decode() for _ in range(2)]
    env = {
        "TADA_MODE": "production",
        "DISCORD_TOKEN": "a-token",
        "TADA_BOT_ENCRYPTION_KEY": ",".join(keys),
        "TADA_ENGINE_SECRET_KEY": "k" * 48,
    }
    assert production_problems({}, env)[1] == []
    assert production_problems({}, {})[1] == []  # development: nothing is required


def test_bad_values_are_reported_without_echoing_them() -> None:
    env = {
        "TADA_MODE": "production",
        "DISCORD_TOKEN": "a-token",
        "TADA_BOT_ENCRYPTION_KEY": f"{Fernet.generate_key().decode()},not-a-key-xyz",
        "TADA_ENGINE_SECRET_KEY": "too-short-secret",
    }
    _, problems = production_problems({}, env)
    text = "\n".join(p.render() for p in problems)
    assert "key 2 of 2 is not a Fernet key" in text
    assert "only 16 characters" in text
    assert "not-a-key-xyz" not in text and "too-short-secret" not in text


def test_a_remote_api_needs_no_engine_secret() -> None:
    env = {"TADA_MODE": "production", "TADA_API_URL": "https://api.ta-da.io/tadzagent"}
    _, problems = production_problems({}, env)
    assert [p.env for p in problems] == ["DISCORD_TOKEN", "TADA_BOT_ENCRYPTION_KEY"]
