"""Audio whose header lies, and MP4 box trees, cost bounded memory and time: a typed refusal.

Reproduced first (issue 24, items 1 and 4): a 40 KB WAV or Matroska file declaring about
150 MHz made ffmpeg's resampler take ~870 MB and 11 s before the 400; the bot converted a
31 KB FLAC (1 MHz, stereo, 120 s) to a 480 MB WAV kept whole in memory (1.9 GB at 8
channels); header fields of 0 raised ZeroDivisionError in the bot (pydub); a moov of 2
million empty boxes cost +380 MB, and a deeply nested one raised RecursionError (a 500 in
the engine, uncaught in the bot). Now the declared fields are a cheap first gate, every
decode runs confined (engine.confine) at a fixed rate and channel count, and the box walk
is iterative and counted.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from bot.media import MediaRejected, check_audio, decode_mono
from engine.settings import JobSettings
from engine.voice.audio import SampleRejected, decode
from engine.voice.container import AudioContainer, ContainerRefused, detect
from tests.conftest import make_settings, register, running_engine
from tests.engine.voice.conftest import base_sample, h, reference_backend, upload_sample
from tests.security import audio_hostile as hostile
from tests.waiting import cpu_seconds

pytestmark = pytest.mark.slow(30)

__all__ = ["base_sample", "reference_backend"]  # fixtures

# Peak RSS bounds (MB): the target for the process itself, and what a confined
# ffmpeg may reach (its budget, 256 MiB over a 160 MiB base, with slack).
TARGET_MB = 300.0
DECODER_MB = 450.0
CPU_S = 20.0


lying_headers = hostile.lying_headers
box_trees = hostile.box_trees


# -- the cheap gate: what a header declares ------------------------------------------------


@pytest.mark.no_database  # the gate and the confined decoders alone
def test_declared_rates_channels_and_zero_fields_are_refused_before_decoding(
    tmp_path: Path,
) -> None:
    for name, (data, _, reason) in lying_headers(tmp_path).items():
        with pytest.raises(ContainerRefused) as caught:
            detect(io.BytesIO(data))
        assert reason in str(caught.value), (name, str(caught.value))


@pytest.mark.no_database  # the gate and the confined decoders alone
def test_box_trees_are_refused_counted_not_recursed(tmp_path: Path) -> None:
    for name, (data, _, reason) in box_trees().items():
        started = cpu_seconds()
        with pytest.raises(ContainerRefused) as caught:
            detect(io.BytesIO(data))
        assert reason in str(caught.value), (name, str(caught.value))
        assert cpu_seconds() - started < 5, name


@pytest.mark.no_database  # the gate and the confined decoders alone
def test_the_matroska_gate_reads_a_bounded_number_of_elements() -> None:
    started = cpu_seconds()
    assert detect(io.BytesIO(hostile.matroska_many_fields(3_000_000))) is AudioContainer.MATROSKA
    assert cpu_seconds() - started < 2


@pytest.mark.no_database  # the gate and the confined decoders alone
def test_an_ordinary_header_passes_the_gate(tmp_path: Path) -> None:
    for data in (
        hostile.wav_declaring(48000, channels=2),
        hostile.wav_declaring(384000, channels=8, bits=24),
        hostile.flac_declaring(44100, 2, seconds=2.0),
    ):
        assert detect(io.BytesIO(data)) in (AudioContainer.WAV, AudioContainer.FLAC)


# -- the OS bound, whatever the gate lets through ------------------------------------------


@pytest.mark.no_database  # the gate and the confined decoders alone
def test_the_engines_decode_is_confined_when_no_header_says_the_rate(tmp_path: Path) -> None:
    """Tracks past the elements the gate reads: the confined ffmpeg hits its limit."""
    ((data, _, _),) = hostile.unchecked_headers(tmp_path).values()
    path = tmp_path / "x.mka"
    path.write_bytes(data)
    with path.open("rb") as fh:
        assert detect(fh) is AudioContainer.MATROSKA  # the gate did not see the rate
    started = cpu_seconds()  # ffmpeg's included: the confiner waits for it
    with pytest.raises(SampleRejected, match="memory"):
        decode(path, 24000, 300.0)
    assert cpu_seconds() - started < 5


@pytest.mark.no_database  # the gate and the confined decoders alone
def test_the_bots_decode_fixes_rate_and_channels_and_bounds_its_output(tmp_path: Path) -> None:
    """Past the gate (called directly), the 1 MHz stereo FLAC decodes to 16 kHz mono."""
    data = hostile.flac_declaring(1_000_000, 2)
    samples = decode_mono(data, AudioContainer.FLAC, max_seconds=300.0)
    assert len(samples) == pytest.approx(120 * 16000, abs=16000)
    with pytest.raises(MediaRejected):
        decode_mono(
            hostile.matroska_declaring(150_000_001, tmp_path), AudioContainer.MATROSKA, 300.0
        )


# -- the bot: a short message, never an arithmetic error ----------------------------------


@pytest.mark.no_database  # the gate and the confined decoders alone
def test_the_bot_refuses_each_with_a_short_message(tmp_path: Path) -> None:
    family = {**lying_headers(tmp_path), **box_trees()}
    family.update(hostile.unchecked_headers(tmp_path))
    for name, (data, file_name, reason) in family.items():
        with pytest.raises(MediaRejected) as caught:
            check_audio(data, file_name)
        message = str(caught.value)
        assert len(message) < 220 and "ffmpeg" not in message, (name, message)
        assert reason in message, (name, message)


# -- measured: peak RSS of the process and of its decoder, CPU of the tree ----------------

MEASURED = [
    ("wav 150 MHz", "engine-decode"),
    ("wav 150 MHz", "bot-check"),
    ("mkv 150 MHz", "engine-decode"),
    ("mkv 150 MHz", "bot-check"),
    ("mkv 150 MHz past 1100 Voids", "engine-decode"),
    ("mkv 150 MHz past 1100 Voids", "bot-check"),
    ("flac 1 MHz stereo 120 s", "bot-check"),
    ("flac 1 MHz stereo 120 s", "engine-decode"),
    ("flac 1 MHz 8 channels", "bot-check"),
    ("wav rate 0", "bot-check"),
    ("mp4 2M empty boxes", "engine-detect"),
    ("mp4 2M empty boxes", "bot-check"),
    ("mp4 nested 100k deep", "engine-detect"),
    ("mp4 top level 3M boxes", "engine-detect"),
]


@pytest.mark.no_database  # the gate and the confined decoders alone
def test_each_costs_bounded_memory_and_cpu(tmp_path: Path) -> None:
    family = {**lying_headers(tmp_path), **box_trees(), **hostile.unchecked_headers(tmp_path)}
    for name, stage in MEASURED:
        data, file_name, _ = family[name]
        got = hostile.measure(stage, data, file_name, tmp_path)
        assert got["outcome"].startswith("refused"), (name, stage, got)
        assert got["self_growth_mb"] < TARGET_MB, (name, stage, got)
        assert got["decoder_peak_mb"] < DECODER_MB, (name, stage, got)
        assert got["cpu_s"] < CPU_S, (name, stage, got)


# -- through the engine's API --------------------------------------------------------------


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = make_settings(
        tmp_path / "engine", jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=120)
    )
    async with running_engine(settings) as pair:
        yield pair


async def test_the_api_answers_400_with_the_reason(
    engine: tuple[FastAPI, httpx.AsyncClient], tmp_path: Path
) -> None:
    _, api = engine
    key = await register(api)
    cases = {
        "wav 150 MHz": (hostile.wav_declaring(150_000_001), "x.wav", "sample rate"),
        "mkv 150 MHz": (hostile.matroska_declaring(150_000_001, tmp_path), "x.webm", "sample rate"),
        "mkv 150 MHz past Voids": (
            hostile.matroska_padded(hostile.matroska_declaring(150_000_001, tmp_path), 1100),
            "x.webm",
            "memory",
        ),
        "flac 1 MHz": (hostile.flac_declaring(1_000_000, 2), "x.flac", "sample rate"),
        "wav channels 0": (hostile.wav_declaring(16000, channels=0), "x.wav", "channels"),
        "mp4 2M boxes": (hostile.mp4_many_boxes(2_000_000), "x.m4a", "boxes"),
        "mp4 nested": (hostile.mp4_nested(100_000), "x.m4a", "nested"),
    }
    for name, (data, file_name, reason) in cases.items():
        upload_id = await upload_sample(api, key, data, file_name=file_name)
        # The CPU seconds of the decoders it ran, not the wall clock: a loaded machine
        # stretches the wall, never the work (this process's own CPU counts the voice
        # models warming up beside it).
        started = cpu_seconds(children_only=True)
        resp = await api.post(
            "/api/voices/uploads", params={"upload_id": upload_id}, headers=h(key)
        )
        assert resp.status_code == 400, (name, resp.status_code, resp.text[:300])
        assert reason in resp.json()["detail"], (name, resp.json())
        assert cpu_seconds(children_only=True) - started < 5, name
    assert (await api.get("/api/voices", headers=h(key))).json() == []
