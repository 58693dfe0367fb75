"""The neural back end (VibeVoice through transformers) on a tiny random-weight model.

The model is built from config and saved in the layout a pulled model has, so the real
loading code opens it; it speaks noise, and these tests check the path: load, clone from a
reference clip, generate, sample rate, duration bounds, cancellation, device and dtype
choice, the fallback to the CPU reference, the pull's config line, and the HTTP API once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from engine.cli import usage_line
from engine.model_store import RECORD
from engine.settings import EngineSettings, JobSettings
from engine.voice.audio import Sample
from engine.voice.neural import (
    FRAMES_PER_SECOND,
    SAMPLE_RATE,
    NeuralBackend,
    NeuralUnavailable,
    Placement,
    choose_placement,
    frame_cap,
)
from engine.voice.random_model import build_random_model
from engine.voice.reference import CpuReferenceBackend
from engine.voice.settings import NeuralDevice, NeuralDtype, VoiceSettings
from tests.conftest import REFERENCE_VOICE, backend_for, make_settings, register, running_engine
from tests.engine.voice.conftest import Speaker, clone, fetch, h
from tests.waiting import CEILING_S

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = "Hi there."


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_model(tmp_path_factory.mktemp("vibevoice") / "tiny-vibevoice")


def neural_settings(model: Path | str, **extra: object) -> VoiceSettings:
    values: dict[str, object] = {
        "backend": "neural",
        "neural_model": str(model),
        "neural_diffusion_steps": 1,
    }
    return VoiceSettings.model_validate(values | extra)


@pytest.fixture(scope="module")
def neural(tiny_model: Path) -> NeuralBackend:
    backend = NeuralBackend(neural_settings(tiny_model))
    assert backend.model() is not None, backend.unavailable
    return backend


def as_sample(speaker: Speaker) -> Sample:
    import librosa

    audio = librosa.resample(speaker.audio, orig_sr=speaker.sample_rate, target_sr=SAMPLE_RATE)
    seconds = len(audio) / SAMPLE_RATE
    return Sample(np.asarray(audio, dtype=np.float32), SAMPLE_RATE, seconds, seconds)


@pytest.mark.no_database
def test_it_loads_clones_and_speaks_at_its_rate(
    neural: NeuralBackend, speakers: dict[str, Speaker]
) -> None:
    assert neural.sample_rate == SAMPLE_RATE
    assert neural.describe().endswith("on cpu, float32")
    profile = neural.analyse(as_sample(speakers["low"]))
    assert profile.backend == "neural"
    assert profile.base_similarity is None
    assert 60 < profile.median_f0_hz < 200
    seen: list[float] = []
    speech = neural.synthesise(TEXT, profile, seen.append)
    assert speech.sample_rate == SAMPLE_RATE
    # The random model speaks until the cap: the cap bounds every generation's length.
    assert 0 < speech.seconds <= frame_cap(TEXT) / FRAMES_PER_SECOND + 0.5
    assert np.isfinite(speech.audio).all() and np.abs(speech.audio).max() <= 1.0
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert -1.0 <= neural.similarity(speech, profile) <= 1.0


class Stop(Exception):
    pass


@pytest.mark.no_database
def test_a_raising_progress_stops_the_generation(
    neural: NeuralBackend, speakers: dict[str, Speaker]
) -> None:
    profile = neural.analyse(as_sample(speakers["low"]))
    calls: list[float] = []

    def cancel(done: float) -> None:
        calls.append(done)
        raise Stop

    with pytest.raises(Stop):
        neural.synthesise("A much longer text that would take many frames to say.", profile, cancel)
    assert len(calls) == 1  # stopped at the first frame, not at the end


@pytest.mark.parametrize(
    ("device", "dtype", "cuda", "bf16", "expected"),
    [
        (NeuralDevice.AUTO, NeuralDtype.AUTO, True, True, Placement("cuda", "bfloat16")),
        (NeuralDevice.AUTO, NeuralDtype.AUTO, True, False, Placement("cuda", "float16")),
        (NeuralDevice.AUTO, NeuralDtype.AUTO, False, False, Placement("cpu", "float32")),
        (NeuralDevice.CPU, NeuralDtype.AUTO, True, True, Placement("cpu", "float32")),
        (NeuralDevice.CUDA, NeuralDtype.FLOAT16, True, True, Placement("cuda", "float16")),
        (NeuralDevice.AUTO, NeuralDtype.BFLOAT16, False, False, Placement("cpu", "bfloat16")),
    ],
)
@pytest.mark.no_database
def test_device_and_dtype_follow_the_machine(
    device: NeuralDevice, dtype: NeuralDtype, cuda: bool, bf16: bool, expected: Placement
) -> None:
    assert choose_placement(device, dtype, cuda=cuda, bf16=bf16) == expected


@pytest.mark.no_database
def test_asking_for_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(NeuralUnavailable, match="no CUDA GPU"):
        choose_placement(NeuralDevice.CUDA, NeuralDtype.AUTO, cuda=False, bf16=False)


@pytest.mark.no_database
@pytest.mark.parametrize("broken", ["hub-id", "folder"])
def test_a_model_that_cannot_load_falls_back_to_the_cpu_reference(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    if broken == "hub-id":
        model = "some-org/never-pulled"
    else:
        model = str(tmp_path / "broken")
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "config.json").write_text("{not json")
    reference = backend_for(REFERENCE_VOICE)  # the session's loaded CPU reference
    assert isinstance(reference, CpuReferenceBackend)
    backend = NeuralBackend(neural_settings(model), fallback=reference)
    with caplog.at_level(logging.ERROR, logger="engine.voice.neural"):
        assert backend.sample_rate == reference.sample_rate
        assert backend.sample_rate == reference.sample_rate  # tried once, said once
    lines = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(lines) == 1 and model in lines[0], lines
    if broken == "hub-id":
        assert "tada-engine models pull some-org/never-pulled" in lines[0]
    assert "using cpu-reference" in backend.describe()


@pytest.mark.no_database
def test_a_pulled_hub_id_names_the_pulled_folder(tmp_path: Path, tiny_model: Path) -> None:
    pulled = tmp_path / "models" / "vibevoice--VibeVoice-1.5B-hf"
    pulled.mkdir(parents=True)
    (pulled / RECORD).write_text(json.dumps({"source": "vibevoice/VibeVoice-1.5B-hf"}))
    settings = EngineSettings.model_validate(
        {"data_dir": tmp_path, "voice": {"neural_model": "vibevoice/VibeVoice-1.5B-hf"}}
    )
    assert settings.voice["neural_model"] == str(pulled)
    line = usage_line("vibevoice/VibeVoice-1.5B-hf", tiny_model)
    assert line == (
        'use it: [engine.voice] backend = "neural" and neural_model = "vibevoice/VibeVoice-1.5B-hf"'
    )


async def test_clone_and_speak_through_the_api(
    tmp_path: Path, tiny_model: Path, speakers: dict[str, Speaker]
) -> None:
    voice = {
        "backend": "neural",
        "neural_model": str(tiny_model),
        "neural_diffusion_steps": 1,
        "preload": False,
    }
    settings = make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        voice=voice,
    )
    async with running_engine(settings) as (_, api):
        key = await register(api, "neural@example.com")
        resp = await clone(api, key, speakers["low"].wav())
        assert resp.status_code == 200, resp.text
        assert resp.json()["backend"] == "neural"
        voice_id = resp.json()["id"]
        spoken = await api.post(
            f"/api/voices/{voice_id}/generations", json={"text": TEXT}, headers=h(key)
        )
        assert spoken.status_code == 200, spoken.text
        body = spoken.json()
        assert 0 < body["duration_seconds"] <= frame_cap(TEXT) / FRAMES_PER_SECOND + 0.5
        audio = await fetch(api, body["url"])
        assert audio.status_code == 200 and len(audio.content) > 1000
        assert isinstance(audio, httpx.Response)


@pytest.mark.no_database
def test_the_written_down_full_config_is_the_published_size() -> None:
    # bench/voice_gpu.sh builds this one on a GPU; no download can check it, so its size
    # does: VibeVoice-1.5B has 2.70 B parameters (1.54 B of them Qwen2.5-1.5B's).
    from transformers import VibeVoiceConfig, VibeVoiceForConditionalGeneration

    from engine.voice import random_model

    config = VibeVoiceConfig(
        text_config=dict(random_model.FULL_TEXT),
        audio_config=dict(random_model.FULL_AUDIO),
        semantic_model_config=dict(random_model.FULL_SEMANTIC),
        diffusion_head_config=dict(random_model.FULL_HEAD),
    )
    with torch.device("meta"):
        model = VibeVoiceForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    text = sum(p.numel() for p in model.model.language_model.parameters())
    assert 2.65e9 < total < 2.75e9 and 1.5e9 < text < 1.6e9


@pytest.mark.no_database
def test_a_pocket_voice_speaks_through_vibevoice_and_the_reference(
    neural: NeuralBackend, speakers: dict[str, Speaker]
) -> None:
    made_by_pocket = neural.analyse(as_sample(speakers["low"])).model_copy(
        update={"backend": "pocket"}
    )
    speech = neural.synthesise(TEXT, made_by_pocket)  # the same kind of clip: VibeVoice speaks
    assert speech.sample_rate == SAMPLE_RATE and speech.seconds > 0
    reference = backend_for(REFERENCE_VOICE)
    assert isinstance(reference, CpuReferenceBackend)
    unloadable = NeuralBackend(neural_settings("some-org/never-pulled"), fallback=reference)
    made_by_vibevoice = made_by_pocket.model_copy(update={"backend": "neural"})
    # The model cannot load here: the CPU reference learns the voice from its clip.
    speech = unloadable.synthesise(TEXT, made_by_vibevoice)
    assert speech.sample_rate == reference.sample_rate and speech.seconds > 0.3
