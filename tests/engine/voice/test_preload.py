"""The voice models load when a worker starts, in the background, with a log line, so a
member's first clone does not wait for them; engines without a worker never pay it."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from engine.settings import JobSettings
from engine.voice.reference import CpuReferenceBackend
from engine.voice.settings import VoiceSettings, voice_settings
from tests.conftest import backend_for, make_settings, running_engine, services_of
from tests.waiting import CEILING_S


def _cold_voice(target_dbfs: float) -> dict[str, object]:
    # Distinct settings get their own (cold) back end: other tests may have warmed the default.
    return {"backend": "cpu-reference", "target_dbfs": target_dbfs}


async def test_a_worker_loads_the_voice_models_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    voice = _cold_voice(-20.25)
    backend = backend_for(voice_settings(voice))
    assert not backend.warm
    settings = make_settings(
        tmp_path / "engine", jobs=JobSettings(in_process_workers=1), voice=voice
    )
    with caplog.at_level(logging.INFO):
        async with running_engine(settings) as (app, _):
            thread = services_of(app).warm_up_thread
            assert thread is not None
            thread.join(timeout=CEILING_S)  # the warm-up itself; the ceiling ends a hang
            assert not thread.is_alive()
            assert backend.warm  # before any clone was asked for
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("voice: loading the models in the background") for m in messages)
    assert any(m.startswith("voice: models ready in") for m in messages)
    assert any(m.startswith("image: ") and "on cpu, float32" in m for m in messages)


async def test_engines_without_a_worker_do_not_load_them(tmp_path: Path) -> None:
    voice = _cold_voice(-20.5)
    settings = make_settings(tmp_path / "engine", voice=voice)  # in_process_workers=0
    async with running_engine(settings) as (app, _):
        # An API process warms up its language detector only (issue 27: the first speech
        # does not wait for it), never the voice models.
        thread = services_of(app).warm_up_thread
        assert thread is not None
        thread.join(timeout=CEILING_S)
    assert not backend_for(voice_settings(voice)).warm


async def test_preload_off_reports_devices_but_loads_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    voice = {**_cold_voice(-20.75), "preload": False}
    settings = make_settings(
        tmp_path / "engine", jobs=JobSettings(in_process_workers=1), voice=voice
    )
    with caplog.at_level(logging.INFO):
        async with running_engine(settings) as (app, _):
            thread = services_of(app).warm_up_thread
            assert thread is not None
            thread.join(timeout=CEILING_S)
    assert not backend_for(voice_settings(voice)).warm
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("voice: cpu-reference") for m in messages)
    assert not any("loading the models" in m for m in messages)


def test_a_stopped_warm_up_loads_nothing() -> None:
    backend = CpuReferenceBackend(VoiceSettings(target_dbfs=-21.0))
    stop = threading.Event()
    stop.set()
    backend.warm_up(stop)
    assert not backend.warm
    assert backend._piper is None


def test_preload_is_on_by_default() -> None:
    assert VoiceSettings().preload is True
