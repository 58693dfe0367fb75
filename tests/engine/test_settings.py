"""Settings: TOML plus environment, validated, placeholder secrets refused in production."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.settings import EngineSettings, SettingsError, load_engine_settings

pytestmark = pytest.mark.no_database


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file(tmp_path: Path) -> None:
    settings = load_engine_settings(None, environ={"TADA_DATA_DIR": str(tmp_path)})
    assert settings.mode == "development"
    assert settings.resolved_database_url.endswith(f"{tmp_path}/engine.sqlite3")
    key = settings.signing_key()
    assert len(key) >= 32
    assert settings.signing_key() == key  # generated once, then reused
    assert (tmp_path / "engine-secret.key").stat().st_mode & 0o777 == 0o600


def test_example_config_is_valid() -> None:
    example = Path(__file__).parents[2] / "config.example.toml"
    settings = load_engine_settings(example, environ={})
    assert settings.port == 8100


@pytest.mark.parametrize("secret", [None, "change-me", "short"])
def test_production_refuses_missing_or_placeholder_secrets(
    tmp_path: Path, secret: str | None
) -> None:
    env = {"TADA_MODE": "production"}
    if secret is not None:
        env["TADA_ENGINE_SECRET_KEY"] = secret
    with pytest.raises(SettingsError, match="TADA_ENGINE_SECRET_KEY"):
        load_engine_settings(write(tmp_path, ""), environ=env)


def test_production_accepts_a_real_secret(tmp_path: Path) -> None:
    env = {"TADA_MODE": "production", "TADA_ENGINE_SECRET_KEY": "k" * 40}
    settings = load_engine_settings(write(tmp_path, ""), environ=env)
    assert settings.signing_key() == b"k" * 40


def test_secrets_in_the_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="TADA_ENGINE_SECRET_KEY"):
        load_engine_settings(write(tmp_path, '[engine]\nsecret_key = "x"\n'), environ={})


def test_unknown_keys_and_bad_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError):
        load_engine_settings(write(tmp_path, "[engine]\nprot = 1\n"), environ={})
    with pytest.raises(SettingsError):
        load_engine_settings(write(tmp_path, "[engine.uploads]\nmax_zip_bytes = -1\n"), environ={})
    with pytest.raises(SettingsError, match="valid TOML"):
        load_engine_settings(write(tmp_path, "[engine\n"), environ={})


def test_a_heartbeat_too_slow_for_its_staleness_is_refused(tmp_path: Path) -> None:
    text = "[engine.jobs]\nheartbeat_seconds = 30\nstale_after_seconds = 60\n"
    with pytest.raises(SettingsError, match="stale_after_seconds must be at least 3 x"):
        load_engine_settings(write(tmp_path, text), environ={})
    ok = "[engine.jobs]\nheartbeat_seconds = 20\nstale_after_seconds = 60\n"
    assert load_engine_settings(write(tmp_path, ok), environ={}).jobs.heartbeat_seconds == 20


def test_the_access_log_is_on_by_default_and_off_when_configured(tmp_path: Path) -> None:
    from engine.cli import _uvicorn_options

    on = EngineSettings(data_dir=tmp_path)
    off = EngineSettings(data_dir=tmp_path, access_log=False)
    assert _uvicorn_options(on, None, None)["access_log"] is True
    assert _uvicorn_options(off, None, None)["access_log"] is False
