"""The qwen3 back end (Qwen3-TTS 12 Hz Base through qwen-tts-hf) on a tiny random-weight model.

The model and its codec are built from config and saved in the layout a pulled
``Qwen/Qwen3-TTS-12Hz-1.7B-Base`` has (``speech_tokenizer/`` inside), so the real loading
code opens it; it speaks noise, and these tests check the path: load, clone from a kept
clip, generate, sample rate, duration bound, progress and cancellation, the fallback to the
CPU reference, the repairs that let qwen-tts run on transformers 5.24 without breaking other
models, what "auto" picks, and the pull from a loopback hub at a pinned revision.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import model_store
from engine.cli import configured_pulls, usage_line
from engine.cli import main as engine_cli
from engine.model_store import RECORD
from engine.settings import EngineSettings
from engine.voice.audio import Sample
from engine.voice.choice import chosen_backend
from engine.voice.handlers import build_backend
from engine.voice.language import spoken_languages
from engine.voice.neural import Placement
from engine.voice.qwen3 import (
    FRAMES_PER_SECOND,
    SAMPLE_RATE,
    Qwen3Backend,
    Qwen3Model,
    frame_cap,
    qwen_tts_modules,
)
from engine.voice.random_qwen3 import build_random_model
from engine.voice.reference import CpuReferenceBackend
from engine.voice.settings import VoiceBackendName, VoiceSettings
from tests.conftest import REFERENCE_VOICE, backend_for
from tests.engine.test_model_store import COMMIT, Hub, _serve
from tests.engine.voice.conftest import Speaker

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.no_database]

TEXT = "Hi there."
REPO = "Qwen/Qwen3-TTS-12Hz-1.7B-Base"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_model(tmp_path_factory.mktemp("qwen3") / "tiny-qwen3")


def qwen3_settings(model: Path | str, **extra: object) -> VoiceSettings:
    return VoiceSettings.model_validate({"backend": "qwen3", "qwen3_model": str(model)} | extra)


@pytest.fixture(scope="module")
def qwen3(tiny_model: Path) -> Qwen3Backend:
    reference = backend_for(REFERENCE_VOICE)
    assert isinstance(reference, CpuReferenceBackend)
    backend = Qwen3Backend(qwen3_settings(tiny_model), encoder=reference.encoder)
    assert backend.model() is not None, backend.unavailable
    return backend


def as_sample(speaker: Speaker) -> Sample:
    import librosa

    audio = librosa.resample(speaker.audio, orig_sr=speaker.sample_rate, target_sr=SAMPLE_RATE)
    seconds = len(audio) / SAMPLE_RATE
    return Sample(np.asarray(audio, dtype=np.float32), SAMPLE_RATE, seconds, seconds)


def test_it_loads_clones_and_speaks_at_its_rate(
    qwen3: Qwen3Backend, speakers: dict[str, Speaker]
) -> None:
    assert qwen3.sample_rate == SAMPLE_RATE
    assert qwen3.describe().endswith("on cpu, float32")
    profile = qwen3.analyse(as_sample(speakers["low"]))
    assert profile.backend == "qwen3"
    assert profile.base_similarity is None
    assert "reference_pcm16" in profile.params
    seen: list[float] = []
    speech = qwen3.synthesise(TEXT, profile, seen.append)
    assert speech.sample_rate == SAMPLE_RATE
    # The cap bounds every generation's length (one codec frame is 1920 samples).
    assert 0 < speech.seconds <= frame_cap(TEXT) / FRAMES_PER_SECOND + 0.1
    assert np.isfinite(speech.audio).all() and 0 < np.abs(speech.audio).max() <= 1.0
    assert len(seen) > 2 and seen == sorted(seen) and seen[-1] == 1.0
    assert -1.0 <= qwen3.similarity(speech, profile) <= 1.0


def test_in_context_mode_prompts_with_the_clip_and_its_transcript(
    tiny_model: Path, speakers: dict[str, Speaker]
) -> None:
    reference = backend_for(REFERENCE_VOICE)
    assert isinstance(reference, CpuReferenceBackend)
    backend = Qwen3Backend(
        qwen3_settings(tiny_model, qwen3_in_context=True),
        encoder=reference.encoder,
        fallback=reference,
    )
    profile = backend.analyse(as_sample(speakers["low"]))
    said = str(profile.params.get("reference_text", ""))
    assert len(said.split()) >= 3, said  # Whisper heard the sample's words
    speech = backend.synthesise(TEXT, profile)
    # The clip's own part of the decoded audio is cut off: only the new speech is left.
    assert 0 < speech.seconds <= frame_cap(TEXT) / FRAMES_PER_SECOND + 0.1
    model = backend.model()
    assert model is not None
    (item,) = model._prompts.values()
    assert item.icl_mode and item.ref_code is not None and item.ref_text == said


class Stop(Exception):
    pass


def test_a_raising_progress_stops_the_generation(
    qwen3: Qwen3Backend, speakers: dict[str, Speaker]
) -> None:
    profile = qwen3.analyse(as_sample(speakers["low"]))
    calls: list[float] = []

    def cancel(done: float) -> None:
        calls.append(done)
        raise Stop

    with pytest.raises(Stop):
        qwen3.synthesise("A much longer text that would take many frames to say.", profile, cancel)
    assert len(calls) == 1  # stopped at the first frame, not at the end
    # The model is free again: the next generation runs.
    assert qwen3.synthesise(TEXT, profile).seconds > 0


def test_voices_of_the_other_zero_shot_back_ends_speak_through_qwen3(
    qwen3: Qwen3Backend, speakers: dict[str, Speaker]
) -> None:
    mine = qwen3.analyse(as_sample(speakers["low"]))
    for other in ("pocket", "neural"):
        speech = qwen3.synthesise(TEXT, mine.model_copy(update={"backend": other}))
        assert speech.sample_rate == SAMPLE_RATE and speech.seconds > 0


@pytest.mark.parametrize("broken", ["hub-id", "no-codec"])
def test_a_model_that_cannot_load_falls_back_to_the_cpu_reference(
    tmp_path: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    if broken == "hub-id":
        model = "some-org/never-pulled"
    else:  # a folder without its speech_tokenizer/: a half-copied pull
        model = str(tmp_path / "half")
        (tmp_path / "half").mkdir()
        (tmp_path / "half" / "config.json").write_text((tiny_model / "config.json").read_text())
    reference = backend_for(REFERENCE_VOICE)
    assert isinstance(reference, CpuReferenceBackend)
    backend = Qwen3Backend(qwen3_settings(model), fallback=reference)
    with caplog.at_level(logging.ERROR, logger="engine.voice.zero_shot"):
        assert backend.sample_rate == reference.sample_rate
        assert backend.sample_rate == reference.sample_rate  # tried once, said once
    lines = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "tada-engine models pull" in backend.unavailable  # type: ignore[operator]
    assert "using cpu-reference" in backend.describe()


def test_importing_qwen_tts_leaves_other_transformers_models_buildable() -> None:
    # qwen-tts-hf registers a process-wide "default" RoPE function that only reads a
    # transformers-4 config; unrepaired, every transformers-5 model with a default RoPE
    # built after it failed ("'MimiEncoderConfig' object has no attribute 'rope_theta'").
    from transformers import MimiConfig, MimiModel, Qwen2Config, Qwen2Model

    qwen_tts_modules()
    mimi = MimiConfig(
        hidden_size=16,
        num_filters=4,
        num_residual_layers=1,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=32,
        codebook_dim=8,
        vector_quantization_hidden_dimension=8,
        upsample_groups=16,
        codebook_size=8,
        num_quantizers=2,
    )
    MimiModel(mimi)
    qwen2 = Qwen2Config(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = Qwen2Model(qwen2)
    expected = 1.0 / (qwen2.rope_parameters["rope_theta"] ** (torch.arange(0, 8, 2) / 8))
    assert torch.allclose(model.rotary_emb.inv_freq, expected)


def test_a_codec_encoder_in_the_published_key_layout_loads_its_weights(
    tiny_model: Path, tmp_path: Path
) -> None:
    # The published speech_tokenizer/model.safetensors keeps Mimi's flat transformers-4
    # layout; transformers 5.24 renames it for its own MimiModel only, so unrepaired the
    # encoder of Qwen3-TTS's codec loaded random weights (with a warning).
    import shutil

    from safetensors.torch import save_file

    qt = qwen_tts_modules()
    loaded = qt.Qwen3TTSTokenizerV2Model.from_pretrained(str(tiny_model / "speech_tokenizer"))
    nested_to_flat = {
        "encoder.encoder.encoder_seanet.layers.": "encoder.encoder.layers.",
        "encoder.encoder.encoder_transformer.": "encoder.encoder_transformer.",
        "encoder.encoder.downsample.": "encoder.downsample.",
    }
    published: dict[str, torch.Tensor] = {}
    for name, tensor in loaded.state_dict().items():
        for nested, flat in nested_to_flat.items():
            if name.startswith(nested):
                name = flat + name[len(nested) :]
        published[name] = torch.randn_like(tensor) if name.startswith("encoder.") else tensor
    assert "encoder.downsample.conv.weight" in published
    codec = tmp_path / "speech_tokenizer"
    shutil.copytree(tiny_model / "speech_tokenizer", codec)
    save_file({k: v.contiguous() for k, v in published.items()}, codec / "model.safetensors")
    again = qt.Qwen3TTSTokenizerV2Model.from_pretrained(str(codec)).state_dict()
    for nested, flat in nested_to_flat.items():
        names = [n for n in again if n.startswith(nested)]
        assert names, nested
        for name in names:
            assert torch.equal(again[name], published[flat + name[len(nested) :]]), name


def test_the_written_down_full_talker_is_the_published_size() -> None:
    # bench/voice_gpu_qwen3.sh builds this one on a GPU; no download can check it, so its
    # size does: the 1.7B talker has 1,916,676,352 parameters (the published 1.7B model's
    # count without the Base model's speaker encoder).
    from engine.voice import random_qwen3

    qt = qwen_tts_modules()
    spec = random_qwen3.FULL
    talker = {k: v for k, v in spec["talker"].items() if k != "mrope_section"}
    config = qt.Qwen3TTSConfig(
        talker_config={
            **talker,
            "vocab_size": spec["codebook"] + 1024,
            "text_vocab_size": spec["text_vocab"],
            "text_hidden_size": spec["text_hidden"],
            "num_code_groups": spec["quantizers"],
            "rope_scaling": {"rope_type": "default", "mrope_section": [24, 20, 20]},
            "code_predictor_config": {
                **spec["predictor"],
                "vocab_size": spec["codebook"],
                "num_code_groups": spec["quantizers"],
            },
            "spk_id": {},
            "spk_is_dialect": {},
            "codec_language_id": {},
        },
        speaker_encoder_config=spec["speaker"],
        tts_model_type="base",
    )
    with torch.device("meta"):
        model = qt.Qwen3TTSForConditionalGeneration(config)
    assert sum(p.numel() for p in model.talker.parameters()) == 1_916_676_352


@pytest.fixture
def pulled_qwen3(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "models" / model_store.local_name(REPO)
    (folder / "speech_tokenizer").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "speech_tokenizer" / "config.json").write_text("{}")
    (folder / RECORD).write_text(json.dumps({"source": REPO, "revision": COMMIT}))
    yield tmp_path


def test_auto_picks_qwen3_on_a_gpu_host_once_pulled(
    pulled_qwen3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unpulled = VoiceSettings(backend="auto", qwen3_model=str(pulled_qwen3 / "nothing"))
    assert chosen_backend(unpulled, cuda=True) is VoiceBackendName.POCKET
    settings = EngineSettings.model_validate({"data_dir": pulled_qwen3, "voice": {}})
    voice = VoiceSettings.model_validate(settings.voice)
    # The default hub id names the pulled folder.
    assert voice.qwen3_model == str(pulled_qwen3 / "models" / "Qwen--Qwen3-TTS-12Hz-1.7B-Base")
    assert chosen_backend(voice, cuda=False) is VoiceBackendName.POCKET
    assert chosen_backend(voice, cuda=True) is VoiceBackendName.QWEN3
    # An explicit choice is kept, whatever the machine.
    pocket = voice.model_copy(update={"backend": VoiceBackendName.POCKET})
    assert chosen_backend(pocket, cuda=True) is VoiceBackendName.POCKET
    monkeypatch.setattr("engine.voice.choice.cuda_present", lambda: True)
    assert isinstance(build_backend(voice), Qwen3Backend)
    assert spoken_languages(voice) == frozenset(
        {"zh", "en", "ja", "ko", "de", "fr", "ru", "pt", "es", "it"}
    )


def test_models_pull_names_qwen3_for_a_gpu_host_only(tmp_path: Path) -> None:
    settings = EngineSettings.model_validate(
        {"data_dir": tmp_path, "voice": {"qwen3_revision": COMMIT}}
    )
    on_cpu = [repo for repo, _, _ in configured_pulls(settings, cuda=False)]
    on_gpu = configured_pulls(settings, cuda=True)
    assert REPO not in on_cpu and on_cpu  # Pocket TTS's files only
    assert (REPO, None, COMMIT) in on_gpu and len(on_gpu) == len(on_cpu) + 1
    only = EngineSettings.model_validate({"data_dir": tmp_path, "voice": {"backend": "qwen3"}})
    assert configured_pulls(only, cuda=False) == [(REPO, None, None)]


def test_models_pull_fetches_qwen3_at_the_pinned_revision_and_it_loads(
    tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "data"
    config = tmp_path / "engine.toml"

    def write(revision: str) -> None:
        config.write_text(
            f'[engine]\ndata_dir = "{data}"\n[engine.voice]\nbackend = "qwen3"\n'
            f'qwen3_revision = "{revision}"\n'
        )

    asked: list[str | None] = []
    real_pull = model_store.pull_hub

    def spy(repo_id: str, data_dir: Path, **options: object) -> object:
        asked.append(options.get("revision"))  # type: ignore[arg-type]
        return real_pull(repo_id, data_dir, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(model_store, "pull_hub", spy)
    write(COMMIT)
    for state, endpoint in _serve(Hub(tiny_model)):
        state.cuts["model.safetensors"] = 1  # cut once: the pull resumes
        assert engine_cli(["--config", str(config), "models", "pull", "--endpoint", endpoint]) == 0
    assert asked == [COMMIT]
    out = capsys.readouterr().out
    assert f"pulled {REPO}:" in out and "cut; resuming" in out
    folder = data / "models" / model_store.local_name(REPO)
    codec = folder / "speech_tokenizer" / "model.safetensors"
    assert (
        codec.read_bytes() == (tiny_model / "speech_tokenizer" / "model.safetensors").read_bytes()
    )
    assert json.loads((folder / RECORD).read_text())["revision"] == COMMIT
    assert usage_line(REPO, folder) == (
        f'use it: [engine.voice] backend = "qwen3" and qwen3_model = "{REPO}"'
    )
    # The default hub id resolves to the pulled folder, which loads and speaks.
    from engine.settings import load_engine_settings
    from engine.voice.settings import voice_settings

    voice = voice_settings(load_engine_settings(config).voice)
    assert voice.qwen3_model == str(folder)
    model = Qwen3Model(folder, Placement("cpu", "float32"), voice)
    clip = (np.random.default_rng(0).standard_normal(3 * SAMPLE_RATE) * 0.1).astype(np.float32)
    assert model.generate(clip, "Hi.").size > 0
    capsys.readouterr()  # the load's progress bars
    # At the pinned revision: a later start needs no network.
    dead = "http://127.0.0.1:9"
    assert engine_cli(["--config", str(config), "models", "pull", "--endpoint", dead]) == 0
    assert asked == [COMMIT]
    # A new pin: pulled again (here with no network, so it says so and keeps the old one).
    write("f" * 40)
    pull = ["--config", str(config), "models", "pull", "--endpoint", dead]
    assert engine_cli([*pull, "--offline-ok"]) == 0
    assert asked == [COMMIT, "f" * 40]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be reached" in err[0], err
