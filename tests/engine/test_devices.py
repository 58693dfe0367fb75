"""The start-up device report: which device and dtype each back end uses, and a warning,
with the fix, when a GPU is present but unused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine.devices import GpuProbe, device_report, image_placement, probe
from engine.image.settings import ImageSettings

pytestmark = pytest.mark.no_database

VOICE = "cpu-reference (Piper ...) on cpu, float32"
CPU_BUILD_WITH_GPU = GpuProbe(torch_version="2.13.0+cpu", nvidia_driver=True)
CUDA_GPU = GpuProbe(
    torch_version="2.13.0",
    cuda_build="12.8",
    cuda_available=True,
    device_name="NVIDIA H200",
    bf16_supported=True,
    nvidia_driver=True,
)
NO_GPU = GpuProbe(torch_version="2.13.0+cpu")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    return tmp_path


def warnings_of(lines: list[tuple[int, str]]) -> list[str]:
    return [message for level, message in lines if level >= logging.WARNING]


def test_the_cpu_build_on_a_gpu_machine_warns_and_names_the_fix() -> None:
    lines = device_report(ImageSettings(), CPU_BUILD_WITH_GPU, voice_line=VOICE)
    assert lines[0] == (logging.INFO, f"voice: {VOICE}")
    assert "on cpu, float32" in lines[1][1]
    [warning] = warnings_of(lines)
    assert "NVIDIA GPU is present" in warning
    assert "torch 2.13.0+cpu is a CPU-only build" in warning
    assert "make gpu" in warning


def test_a_usable_gpu_runs_a_real_model_in_bfloat16(checkpoint: Path) -> None:
    lines = device_report(ImageSettings(base_model=checkpoint), CUDA_GPU, voice_line=VOICE)
    assert lines[1] == (logging.INFO, f"image: {checkpoint} on cuda (NVIDIA H200), bfloat16")
    assert warnings_of(lines) == []


def test_float16_where_the_gpu_has_no_bfloat16(checkpoint: Path) -> None:
    old = GpuProbe(torch_version="2.13.0", cuda_build="12.8", cuda_available=True)
    assert image_placement(ImageSettings(base_model=checkpoint), old).dtype == "float16"
    forced = ImageSettings(base_model=checkpoint, dtype="float32")
    assert image_placement(forced, CUDA_GPU).dtype == "float32"


def test_a_gpu_left_unused_by_the_config_warns() -> None:
    lines = device_report(ImageSettings(device="cpu"), CUDA_GPU, voice_line=VOICE)
    [warning] = warnings_of(lines)
    assert "NVIDIA H200" in warning
    assert 'engine.image.device = "cpu"' in warning
    assert '"auto"' in warning


def test_a_cuda_build_that_cannot_reach_the_gpu_warns() -> None:
    broken = GpuProbe(torch_version="2.13.0", cuda_build="12.8", nvidia_driver=True)
    [warning] = warnings_of(device_report(ImageSettings(), broken, voice_line=VOICE))
    assert "cannot use it" in warning and "nvidia-smi" in warning


def test_a_cuda_device_without_a_gpu_warns_that_jobs_will_fail() -> None:
    [warning] = warnings_of(device_report(ImageSettings(device="cuda:0"), NO_GPU, voice_line=""))
    assert "sees no CUDA GPU" in warning


def test_no_gpu_no_warning_and_the_tiny_model_says_it_draws_noise() -> None:
    lines = device_report(ImageSettings(), NO_GPU, voice_line=VOICE)
    assert warnings_of(lines) == []
    assert "tiny random test model (draws noise" in lines[1][1]
    # On a GPU the tiny model stays float32 (it is built so), and says a real one is missing.
    gpu_lines = device_report(ImageSettings(), CUDA_GPU, voice_line=VOICE)
    assert "on cuda (NVIDIA H200), float32" in gpu_lines[1][1]
    assert any("base_model" in message for _, message in gpu_lines[2:])


def test_the_report_matches_the_pipelines_own_choice_on_this_machine() -> None:
    from engine.image.pipeline import resolve_device

    here = probe()
    assert image_placement(ImageSettings(), here).device == resolve_device("auto").type
