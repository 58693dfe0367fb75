"""``[engine.voice]``: defaults that work, the example file valid, bad values refused at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.app import create_app
from engine.services import build_services
from engine.settings import load_engine_settings
from engine.voice.handlers import CLONE_KIND, GENERATE_KIND
from engine.voice.piper_base import BaseVoiceError, PiperBase
from engine.voice.settings import AudioFormat, VoiceSettings, voice_settings
from tests.conftest import make_settings

pytestmark = pytest.mark.no_database


def test_defaults_need_no_config() -> None:
    settings = voice_settings({})
    assert settings.audio_format is AudioFormat.MP3
    assert settings.min_sample_seconds == 3.0 and settings.max_sample_seconds == 300.0


def test_the_example_config_documents_valid_voice_keys() -> None:
    example = Path(__file__).parents[3] / "config.example.toml"
    raw = load_engine_settings(example, environ={}).voice
    assert raw, "config.example.toml has no [engine.voice] section"
    assert voice_settings(raw) == VoiceSettings()


@pytest.mark.parametrize(
    "raw",
    [
        {"backend": "elevenlabs"},
        {"min_sample_seconds": 10, "max_sample_seconds": 5},
        {"envelope_weight": 1.5},
        {"max_warp": 0.9},
        {"audio_format": "ogg"},
        {"piper_model": "/x.onnx"},
        {"unknown_key": 1},
    ],
)
def test_bad_voice_settings_stop_the_engine_at_start(tmp_path: Path, raw: dict) -> None:
    with pytest.raises(ValueError):
        create_app(make_settings(tmp_path, voice=raw))


def test_the_engine_registers_both_voice_jobs(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    assert {CLONE_KIND, GENERATE_KIND} <= set(app.state.services.worker.handlers)


def test_a_piper_model_with_the_wrong_hash_is_refused() -> None:
    with pytest.raises(BaseVoiceError, match="expected SHA-256"):
        PiperBase(VoiceSettings(piper_sha256="0" * 64))


async def test_each_engine_owns_one_back_end_that_its_handlers_use(tmp_path: Path) -> None:
    # No process-wide cache: the composition root builds the back end, on first use.
    first = build_services(make_settings(tmp_path / "a"))
    second = build_services(make_settings(tmp_path / "b"))
    try:
        assert first.voice.backend is first.voice.backend
        assert first.voice.backend is not second.voice.backend
        handler = first.worker.handlers[GENERATE_KIND]
        assert getattr(handler, "__self__", None) is first.voice
    finally:
        await first.close()
        await second.close()
