"""The pocket back end (Kyutai Pocket TTS) on a tiny random-weight model.

The model is built from a pocket-tts config with tiny widths and saved in the two folders a
pull makes, so the real loading code opens it; it speaks noise, and these tests check the
path: load, clone from a reference clip, generate, sample rate, progress, cancellation, the
fallback to the CPU reference, voices of other back ends after a switch, torch's thread
setting, the pulled folders named by hub id, and the HTTP API once. The pull itself is in
tests/engine/test_model_store.py.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from engine.model_store import RECORD
from engine.settings import EngineSettings, JobSettings
from engine.voice.audio import Sample
from engine.voice.backend import SpeakerProfile, pcm16_b64, stream_speech
from engine.voice.handlers import build_backend
from engine.voice.neural import Placement
from engine.voice.pocket import (
    FIRST_PIECE_S,
    SAMPLE_RATE,
    PocketBackend,
    local_config,
    quantize_mode,
    required_files,
)
from engine.voice.random_pocket import TINY_CONFIG, build_random_pocket
from engine.voice.reference import CpuReferenceBackend, KeptClipMissing
from engine.voice.settings import PocketQuantize, VoiceSettings
from tests.conftest import TEST_VOICE, backend_for, make_settings, register, running_engine
from tests.engine.voice.conftest import Speaker, clone, fetch, h

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = "Hi there."
# The tiny model never says its end: every generation runs to pocket-tts's length cap,
# (tokens / 3 + 2) s at 12.5 frames a second, 1920 samples a frame.
EOS_NEVER = 1e9


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pocket")
    build_random_pocket(root, "tiny")
    return root


@pytest.fixture(scope="module")
def cap_seconds(tiny: Path) -> float:
    """How long the tiny model speaks TEXT: its length cap, from TEXT's token count."""
    from tokenizers import Tokenizer

    path = tiny / "kyutai--pocket-tts-without-voice-cloning" / "languages/tiny/tokenizer.json"
    tokens = len(Tokenizer.from_file(str(path)).encode(TEXT).ids)
    return math.ceil((tokens / 3 + 2) * 12.5) / 12.5


def pocket_settings(root: Path, **extra: object) -> VoiceSettings:
    config = root / "pocket-tiny.yaml"
    values: dict[str, object] = {
        "backend": "pocket",
        "pocket_config": str(config),
        "pocket_model": str(root / "kyutai--pocket-tts"),
        "pocket_tokenizer": str(root / "kyutai--pocket-tts-without-voice-cloning"),
        "pocket_eos_threshold": EOS_NEVER,
    }
    return VoiceSettings.model_validate(values | extra)


@pytest.fixture(scope="module")
def reference() -> CpuReferenceBackend:
    backend = backend_for(VoiceSettings.model_validate(TEST_VOICE))
    assert isinstance(backend, CpuReferenceBackend)
    return backend


@pytest.fixture(scope="module")
def pocket(tiny: Path, reference: CpuReferenceBackend) -> PocketBackend:
    backend = PocketBackend(pocket_settings(tiny), encoder=reference.encoder, fallback=reference)
    assert backend.model() is not None, backend.unavailable
    return backend


def as_sample(speaker: Speaker) -> Sample:
    import librosa

    audio = librosa.resample(speaker.audio, orig_sr=speaker.sample_rate, target_sr=SAMPLE_RATE)
    seconds = len(audio) / SAMPLE_RATE
    return Sample(np.asarray(audio, dtype=np.float32), SAMPLE_RATE, seconds, seconds)


@pytest.mark.no_database
def test_it_loads_clones_and_speaks_at_its_rate(
    pocket: PocketBackend, speakers: dict[str, Speaker], cap_seconds: float
) -> None:
    assert pocket.sample_rate == SAMPLE_RATE
    assert pocket.describe().endswith("on cpu, int8")  # quantized on a CPU by default
    profile = pocket.analyse(as_sample(speakers["low"]))
    assert profile.backend == "pocket"
    assert profile.base_similarity is None
    assert 60 < profile.median_f0_hz < 200
    assert len(profile.params["reference_pcm16"]) > 1000
    seen: list[float] = []
    speech = pocket.synthesise(TEXT, profile, seen.append)
    assert speech.sample_rate == SAMPLE_RATE
    assert 0.5 < speech.seconds <= cap_seconds + 0.1
    assert np.isfinite(speech.audio).all() and np.abs(speech.audio).max() <= 1.0
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 2
    assert -1.0 <= pocket.similarity(speech, profile) <= 1.0


@pytest.mark.no_database
@pytest.mark.parametrize("text", ["   ", "...", "\n"])
def test_a_text_with_nothing_to_read_gives_no_audio(
    pocket: PocketBackend, speakers: dict[str, Speaker], text: str
) -> None:
    profile = pocket.analyse(as_sample(speakers["low"]))
    assert pocket.synthesise(text, profile).audio.size == 0  # the job: "nothing to say aloud"


class Stop(Exception):
    pass


@pytest.mark.no_database
def test_a_raising_progress_stops_the_generation_and_the_next_one_runs(
    pocket: PocketBackend, speakers: dict[str, Speaker]
) -> None:
    profile = pocket.analyse(as_sample(speakers["low"]))
    calls: list[float] = []

    def cancel(done: float) -> None:
        calls.append(done)
        raise Stop

    with pytest.raises(Stop):
        pocket.synthesise("A much longer text that would take many frames to say.", profile, cancel)
    assert len(calls) == 1  # stopped at the first chunk, not at the end
    assert pocket.synthesise(TEXT, profile).seconds > 0.5  # the model was handed back


@pytest.mark.no_database
def test_loading_leaves_torchs_threads_alone(tiny: Path) -> None:
    torch.set_num_threads(2)
    try:
        backend = PocketBackend(pocket_settings(tiny))
        assert backend.model() is not None, backend.unavailable
        assert torch.get_num_threads() == 2  # pocket-tts's import sets 1 for the process
    finally:
        torch.set_num_threads(1)


@pytest.mark.no_database
@pytest.mark.parametrize(
    ("given", "expected"),
    [(True, "backbone"), (False, "off"), ("off", "off"), ("backbone", "backbone"), ("all", "all")],
)
def test_pocket_quantize_names_the_int8_layers(given: object, expected: str) -> None:
    # true/false (the setting's earlier spelling) keep meaning pocket-tts's own int8 / float32.
    assert VoiceSettings.model_validate({"pocket_quantize": given}).pocket_quantize == expected
    assert VoiceSettings().pocket_quantize == "backbone"


@pytest.mark.no_database
def test_an_unvalidated_copy_of_the_settings_quantizes_as_it_names() -> None:
    # model_copy(update=...) skips validation: the mode arrives as a plain string.
    cpu = Placement("cpu", "float32")
    for mode in ("off", "backbone", "all"):
        copied = VoiceSettings().model_copy(update={"pocket_quantize": mode})
        assert quantize_mode(copied, cpu) == mode
        assert isinstance(quantize_mode(copied, cpu), PocketQuantize)
    assert (
        quantize_mode(VoiceSettings(pocket_quantize="all"), Placement("cuda", "float16")) == "off"
    )


@pytest.mark.no_database
@pytest.mark.parametrize("given", ["int4", "yes", 2, ""])
def test_an_unknown_pocket_quantize_is_refused(given: object) -> None:
    with pytest.raises(ValidationError, match="pocket_quantize"):
        VoiceSettings.model_validate({"pocket_quantize": given})


@pytest.mark.no_database
def test_quantize_all_runs_the_flow_head_and_codec_decoder_in_int8_and_speaks_its_length(
    tiny: Path, speakers: dict[str, Speaker], cap_seconds: float
) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    clip = as_sample(speakers["low"]).audio[: 3 * SAMPLE_RATE]
    lengths = {}
    for mode in ("all", "backbone"):
        backend = PocketBackend(pocket_settings(tiny, pocket_quantize=mode))
        model = backend.model()
        assert model is not None, backend.unavailable
        flow_net = model.model.flow_lm.flow_net
        decoder = model.model.mimi.decoder_transformer
        int8 = [
            isinstance(m, DynamicInt8Linear)
            for part in (flow_net, decoder)
            for m in part.modules()
            if isinstance(m, (torch.nn.Linear, DynamicInt8Linear))
        ]
        assert int8 and all(int8) == (mode == "all") and any(int8) == (mode == "all")
        # pocket-tts's own int8 (the language model's layers) in both.
        assert isinstance(model.model.flow_lm.transformer.layers[0].linear1, DynamicInt8Linear)
        # The codec's encoder (voice prompts) stays float32.
        encoder = model.model.mimi.encoder_transformer
        assert not any(isinstance(m, DynamicInt8Linear) for m in encoder.modules())
        audio = model.generate(clip, TEXT)
        assert np.isfinite(audio).all()
        lengths[mode] = audio.size / SAMPLE_RATE
        expected_kind = "int8 with the flow head and codec" if mode == "all" else "int8"
        assert backend.describe().endswith(f"on cpu, {expected_kind}")
    # The model never says its end: both speak to the length cap, frame for frame.
    assert lengths["all"] == lengths["backbone"] == pytest.approx(cap_seconds, abs=1e-6)


@pytest.mark.no_database
@pytest.mark.parametrize("pinned", [1, 0])
def test_the_two_pipeline_threads_run_in_inference_mode(
    tiny: Path, speakers: dict[str, Speaker], monkeypatch: pytest.MonkeyPatch, pinned: int
) -> None:
    from pocket_tts.models.tts_model import TTSModel

    seen: dict[str, bool] = {}

    def spy(name: str) -> object:
        original = getattr(TTSModel, name)

        def run(self: object, *args: object, **kwargs: object) -> object:
            seen[name] = torch.is_inference_mode_enabled()
            return original(self, *args, **kwargs)

        return run

    for name in ("_decode_audio_worker", "_autoregressive_generation"):
        monkeypatch.setattr(TTSModel, name, spy(name))
    backend = PocketBackend(pocket_settings(tiny, pocket_threads=pinned))
    model = backend.model()
    assert model is not None, backend.unavailable
    clip = as_sample(speakers["low"]).audio[: 3 * SAMPLE_RATE]
    first = model.generate(clip, TEXT)
    assert seen == {"_decode_audio_worker": True, "_autoregressive_generation": True}
    # The voice's kept state is untouched by a generation: the next one speaks as long.
    assert model.generate(clip, TEXT).size == first.size > 0
    assert not torch.is_inference_mode_enabled()


@pytest.mark.no_database
@pytest.mark.parametrize("pinned", [1, 0])
def test_the_two_pipeline_threads_run_at_pocket_threads(
    tiny: Path, speakers: dict[str, Speaker], monkeypatch: pytest.MonkeyPatch, pinned: int
) -> None:
    from pocket_tts.models.tts_model import TTSModel

    seen: dict[str, int] = {}

    def spy(name: str) -> object:
        original = getattr(TTSModel, name)

        def run(self: object, *args: object, **kwargs: object) -> object:
            seen[name] = torch.get_num_threads()
            return original(self, *args, **kwargs)

        return run

    for name in ("_decode_audio_worker", "_autoregressive_generation"):
        monkeypatch.setattr(TTSModel, name, spy(name))
    torch.set_num_threads(2)
    try:
        backend = PocketBackend(pocket_settings(tiny, pocket_threads=pinned))
        model = backend.model()
        assert model is not None, backend.unavailable
        model.generate(as_sample(speakers["low"]).audio[: 3 * SAMPLE_RATE], TEXT)
        assert seen == {
            "_decode_audio_worker": pinned or 2,
            "_autoregressive_generation": pinned or 2,
        }
        # The caller's threads, and those of threads started afterwards, are as they were.
        assert torch.get_num_threads() == 2
        later: list[int] = []
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert later == [2]
    finally:
        torch.set_num_threads(1)


@pytest.mark.no_database
def test_voices_of_the_other_back_ends_keep_speaking(
    pocket: PocketBackend, reference: CpuReferenceBackend, speakers: dict[str, Speaker]
) -> None:
    # A CPU reference voice: spoken by the CPU reference.
    made_by_reference = reference.analyse(
        Sample(speakers["high"].audio, reference.sample_rate, 8.0, 8.0)
    )
    speech = pocket.synthesise(TEXT, made_by_reference)
    assert speech.sample_rate == reference.sample_rate and speech.seconds > 0.3
    # A VibeVoice voice keeps the same kind of clip: pocket speaks from it.
    made_by_pocket = pocket.analyse(as_sample(speakers["low"]))
    made_by_vibevoice = made_by_pocket.model_copy(update={"backend": "neural"})
    speech = pocket.synthesise(TEXT, made_by_vibevoice)
    assert speech.sample_rate == SAMPLE_RATE and speech.seconds > 0.5
    # The operator switches back to the CPU reference: it learns the voice from the clip.
    speech = reference.synthesise(TEXT, made_by_pocket)
    assert speech.sample_rate == reference.sample_rate and speech.seconds > 0.3
    again = reference.from_kept_clip(made_by_pocket)
    assert again is reference.from_kept_clip(made_by_pocket)  # learnt once
    assert again.backend == "cpu-reference" and 60 < again.median_f0_hz < 200


@pytest.mark.no_database
def test_a_voice_with_no_clip_says_so(reference: CpuReferenceBackend) -> None:
    profile = SpeakerProfile(backend="elsewhere", embedding=[0.0], median_f0_hz=100.0, params={})
    with pytest.raises(KeptClipMissing, match="clone it again"):
        reference.synthesise(TEXT, profile)


@pytest.mark.no_database
@pytest.mark.parametrize("broken", ["not-pulled", "file-missing"])
def test_a_model_that_cannot_load_falls_back_to_the_cpu_reference(
    tmp_path: Path,
    tiny: Path,
    reference: CpuReferenceBackend,
    speakers: dict[str, Speaker],
    caplog: pytest.LogCaptureFixture,
    broken: str,
) -> None:
    if broken == "not-pulled":
        settings = VoiceSettings(backend="pocket")  # the hub ids, never pulled here
    else:
        empty = tmp_path / "kyutai--pocket-tts"
        empty.mkdir()
        settings = pocket_settings(tiny, pocket_model=str(empty))
    backend = PocketBackend(settings, encoder=reference.encoder, fallback=reference)
    with caplog.at_level(logging.ERROR, logger="engine.voice.pocket"):
        assert backend.sample_rate == reference.sample_rate
        assert backend.sample_rate == reference.sample_rate  # tried once, said once
    lines = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(lines) == 1 and "tada-engine models pull" in lines[0], lines
    assert "using cpu-reference" in backend.describe()
    # A clone made meanwhile is the CPU reference's; a pocket voice made before still speaks.
    sample = Sample(speakers["low"].audio, reference.sample_rate, 8.0, 8.0)
    assert backend.analyse(sample).backend == "cpu-reference"
    clip = as_sample(speakers["low"]).audio[: 8 * SAMPLE_RATE]
    made_before = SpeakerProfile(
        backend="pocket",
        embedding=[0.0] * 256,
        median_f0_hz=100.0,
        params={"reference_pcm16": pcm16_b64(clip), "sample_rate": SAMPLE_RATE},
    )
    assert backend.synthesise(TEXT, made_before).sample_rate == reference.sample_rate


@pytest.mark.no_database
def test_auto_unpulled_serves_with_the_reference_and_says_how_to_pull_once(
    reference: CpuReferenceBackend, caplog: pytest.LogCaptureFixture
) -> None:
    assert VoiceSettings().backend == "auto"  # the default
    backend = PocketBackend(VoiceSettings(), encoder=reference.encoder, fallback=reference)
    assert "not pulled yet (`tada-engine models pull`); using cpu-reference" in backend.describe()
    with caplog.at_level(logging.INFO, logger="engine.voice.pocket"):
        assert backend.sample_rate == reference.sample_rate
        assert backend.sample_rate == reference.sample_rate
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(said) == 1, said
    level, line = said[0]
    assert level == logging.WARNING  # the designed fallback, not an error
    assert "no neural voice model pulled yet" in line and "`tada-engine models pull`" in line


@pytest.mark.no_database
def test_auto_picks_pocket_and_the_pulled_hub_ids_name_the_pulled_folders(
    tmp_path: Path,
) -> None:
    assert isinstance(build_backend(VoiceSettings(backend="auto")), PocketBackend)
    for name in ("kyutai--pocket-tts", "kyutai--pocket-tts-without-voice-cloning"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / RECORD).write_text(json.dumps({"source": name}))
    settings = EngineSettings.model_validate({"data_dir": tmp_path, "voice": {"backend": "auto"}})
    voice = VoiceSettings.model_validate(settings.voice)
    assert voice.pocket_model == str(tmp_path / "models" / "kyutai--pocket-tts")
    assert voice.pocket_tokenizer.endswith("kyutai--pocket-tts-without-voice-cloning")
    # The packaged English config pins both files at a hub revision; nothing is local yet.
    wanted = required_files(_packaged())
    assert [(repo, name) for repo, name, _ in wanted] == [
        ("kyutai/pocket-tts", "languages/english/model.safetensors"),
        ("kyutai/pocket-tts-without-voice-cloning", "languages/english/tokenizer.json"),
    ]
    assert all(revision and len(revision) == 40 for _, _, revision in wanted)


def _packaged() -> dict[str, object]:
    from engine.voice.pocket import pocket_config

    return pocket_config(VoiceSettings())


@pytest.mark.no_database
def test_the_config_is_opened_from_local_files_only(tiny: Path) -> None:
    config = local_config(pocket_settings(tiny))
    assert not str(config["weights_path"]).startswith("hf://")
    assert Path(str(config["weights_path"])).is_file()
    table = config["flow_lm"]["lookup_table"]  # type: ignore[index]
    assert Path(table["tokenizer_path"]).is_file()
    assert "weights_path_without_voice_cloning" not in config
    assert TINY_CONFIG["weights_path"].startswith("hf://kyutai/pocket-tts/")


async def test_clone_and_speak_through_the_api(
    tmp_path: Path, tiny: Path, speakers: dict[str, Speaker], cap_seconds: float
) -> None:
    voice = {**pocket_settings(tiny).model_dump(mode="json"), **TEST_VOICE, "backend": "pocket"}
    settings = make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=120),
        voice=voice,
    )
    async with running_engine(settings) as (_, api):
        key = await register(api, "pocket@example.com")
        resp = await clone(api, key, speakers["low"].wav())
        assert resp.status_code == 200, resp.text
        assert resp.json()["backend"] == "pocket"
        voice_id = resp.json()["id"]
        spoken = await api.post(
            f"/api/voices/{voice_id}/generations", json={"text": TEXT}, headers=h(key)
        )
        assert spoken.status_code == 200, spoken.text
        body = spoken.json()
        assert 0.5 < body["duration_seconds"] <= cap_seconds + 0.1
        audio = await fetch(api, body["url"])
        assert audio.status_code == 200 and len(audio.content) > 1000


async def test_voices_keep_speaking_when_the_operator_switches_back_ends(
    tmp_path: Path, tiny: Path, speakers: dict[str, Speaker]
) -> None:
    # One engine's data (database, stored voices) served by the CPU reference, then by the
    # pocket back end (what "auto" becomes once pulled), then by the CPU reference again.
    jobs = JobSettings(in_process_workers=1, wait_timeout_seconds=120)
    by_reference = make_settings(tmp_path / "engine", jobs=jobs, voice=TEST_VOICE)
    pocket_voice = {
        **pocket_settings(tiny).model_dump(mode="json"),
        **TEST_VOICE,
        "backend": "pocket",
    }
    by_pocket = make_settings(tmp_path / "engine", jobs=jobs, voice=pocket_voice)

    async def speaks(api: httpx.AsyncClient, key: str, voice_id: str) -> float:
        spoken = await api.post(
            f"/api/voices/{voice_id}/generations", json={"text": TEXT}, headers=h(key)
        )
        assert spoken.status_code == 200, spoken.text
        return float(spoken.json()["duration_seconds"])

    async with running_engine(by_reference) as (_, api):
        key = await register(api, "switch@example.com")
        resp = await clone(api, key, speakers["low"].wav())
        assert resp.status_code == 200, resp.text
        assert resp.json()["backend"] == "cpu-reference"
        old_voice = resp.json()["id"]
    async with running_engine(by_pocket) as (_, api):
        assert await speaks(api, key, old_voice) > 0.3  # spoken by the CPU reference
        # The lower speaker again (another voice of the same person): the higher one is
        # WORLD-shifted Piper speech, which the reference's voice detector now and then
        # hears as music when it learns the voice from the kept clip below (a PostgreSQL
        # pass saw it once), and that is about the sample, not the switch.
        resp = await clone(api, key, speakers["low"].wav())
        assert resp.status_code == 200, resp.text
        assert resp.json()["backend"] == "pocket"
        new_voice = resp.json()["id"]
        assert await speaks(api, key, new_voice) > 0.5
    async with running_engine(by_reference) as (_, api):
        assert await speaks(api, key, new_voice) > 0.3  # learnt from its kept clip
        assert await speaks(api, key, old_voice) > 0.3


@pytest.mark.no_database
def test_the_stream_is_the_speech_in_pieces(
    pocket: PocketBackend, speakers: dict[str, Speaker], cap_seconds: float
) -> None:
    profile = pocket.analyse(as_sample(speakers["low"]))
    seen: list[float] = []
    pieces = list(pocket.stream(TEXT, profile, seen.append))
    # A short first piece (what a listener waits for), then the rest.
    assert len(pieces) >= 2
    assert FIRST_PIECE_S <= pieces[0].seconds < 1.0
    assert {p.sample_rate for p in pieces} == {SAMPLE_RATE}
    audio = np.concatenate([p.audio for p in pieces])
    assert 0.5 < len(audio) / SAMPLE_RATE <= cap_seconds + 0.1
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert seen == sorted(seen) and seen[-1] == 1.0


@pytest.mark.no_database
def test_a_cpu_reference_voice_streams_through_the_reference(
    pocket: PocketBackend, reference: CpuReferenceBackend, speakers: dict[str, Speaker]
) -> None:
    sample = speakers["high"]
    seconds = len(sample.audio) / sample.sample_rate
    profile = reference.analyse(Sample(sample.audio, sample.sample_rate, seconds, seconds))
    pieces = list(stream_speech(pocket, "Good evening. The lamp is lit.", profile))
    assert len(pieces) == 2  # sentence by sentence
    assert {p.sample_rate for p in pieces} == {reference.sample_rate}
