"""A Pocket TTS voice's state, stored: computed once, read back by any worker.

The model's state after hearing a voice's kept clip (its key/value cache) costs 2-14 s of
CPU to compute with the released model. It is stored through the engine's storage (the
data directory, or the S3 bucket: this file runs in the object-storage pass too), so a
restarted engine, or another worker, speaks a voice's first sentence without hearing its
clip again. These tests count calls of the real model's codec encoder; the model is the
tiny random one of test_pocket.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from engine.services import build_services, build_storage
from engine.storage import NotStored, Storage, StorageError
from engine.voice.backend import SpeakerProfile
from engine.voice.pocket import PocketBackend, PocketModel
from engine.voice.random_pocket import build_random_pocket
from engine.voice.reference import CpuReferenceBackend
from engine.voice.settings import VoiceSettings
from tests.conftest import TEST_VOICE, backend_for, make_settings
from tests.engine.voice.conftest import Speaker
from tests.engine.voice.test_pocket import TEXT, as_sample, pocket_settings

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.no_database]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pocket")
    build_random_pocket(root, "tiny")
    return root


@pytest.fixture(scope="module")
def reference() -> CpuReferenceBackend:
    backend = backend_for(VoiceSettings.model_validate(TEST_VOICE))
    assert isinstance(backend, CpuReferenceBackend)
    return backend


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    """The engine's storage as a test engine builds it: local, or S3 in the S3 pass."""
    return build_storage(make_settings(tmp_path / "engine"))


def started(
    settings: VoiceSettings, storage: Storage | None, reference: CpuReferenceBackend
) -> tuple[PocketBackend, PocketModel, list[int]]:
    """A new back end (a new process, as far as it knows): loaded, with its real codec
    encoder's calls counted."""
    backend = PocketBackend(
        settings, encoder=reference.encoder, fallback=reference, storage=storage
    )
    model = backend.model()
    assert model is not None, backend.unavailable
    calls = [0]
    mimi = model.model.mimi
    encode: Callable[..., Any] = mimi.encode_to_latent

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return encode(*args, **kwargs)

    mimi.encode_to_latent = counted
    return backend, model, calls


def stored_bytes(storage: Storage, key: str) -> bytes:
    with storage.local_artifact(key) as path:
        return path.read_bytes()


def same_state(
    a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]
) -> bool:
    return a.keys() == b.keys() and all(
        a[m].keys() == b[m].keys()
        and all(torch.equal(a[m][k].nan_to_num(), b[m][k].nan_to_num()) for k in a[m])
        for m in a
    )


@pytest.fixture
def voice(
    tiny: Path, storage: Storage, reference: CpuReferenceBackend, speakers: dict[str, Speaker]
) -> Iterator[tuple[SpeakerProfile, dict[str, dict[str, torch.Tensor]]]]:
    """A voice cloned by one engine (its state computed and stored at clone time), and
    that state."""
    backend, model, calls = started(pocket_settings(tiny), storage, reference)
    profile = backend.analyse(as_sample(speakers["low"]))
    assert calls[0] == 1  # heard once, at clone time
    state = model.state_for(backend.clip_of(profile))
    assert calls[0] == 1
    yield profile, state


def test_a_voice_state_survives_a_restart(
    tiny: Path,
    storage: Storage,
    reference: CpuReferenceBackend,
    voice: tuple[SpeakerProfile, dict[str, dict[str, torch.Tensor]]],
) -> None:
    profile, state = voice
    backend, model, calls = started(pocket_settings(tiny), storage, reference)
    speech = backend.synthesise(TEXT, profile)
    assert speech.seconds > 0.5 and np.isfinite(speech.audio).all()
    assert calls[0] == 0  # spoken from the stored state: the clip was not heard again
    assert same_state(model.state_for(backend.clip_of(profile)), state)
    # The stream (what /voice say plays) too, on a third engine.
    backend, _, calls = started(pocket_settings(tiny), storage, reference)
    assert sum(p.seconds for p in backend.stream(TEXT, profile)) > 0.5
    assert calls[0] == 0


def test_a_state_is_deterministic_and_keyed_by_the_model(
    tiny: Path, storage: Storage, reference: CpuReferenceBackend, speakers: dict[str, Speaker]
) -> None:
    clip = as_sample(speakers["low"]).audio[: 3 * 24000]
    _, backbone, _ = started(pocket_settings(tiny), None, reference)
    _, again, _ = started(pocket_settings(tiny), None, reference)
    assert same_state(backbone.state_for(clip), again.state_for(clip))
    # Another quantize mode is another model: its state is stored under another key.
    _, float32, _ = started(pocket_settings(tiny, pocket_quantize="off"), storage, reference)
    _, int8, _ = started(pocket_settings(tiny), storage, reference)
    assert float32.states is not None and int8.states is not None
    assert float32.states.key_for(clip) != int8.states.key_for(clip)
    assert "/" not in float32.states.identity and len(float32.states.identity) >= 16


@pytest.mark.parametrize(
    "damage", ["garbage", "truncated", "bit-flip", "other-model", "other-clip"]
)
def test_a_broken_or_mismatched_state_is_recomputed_and_rewritten(
    tiny: Path,
    storage: Storage,
    reference: CpuReferenceBackend,
    speakers: dict[str, Speaker],
    voice: tuple[SpeakerProfile, dict[str, dict[str, torch.Tensor]]],
    damage: str,
) -> None:
    profile, state = voice
    backend, model, calls = started(pocket_settings(tiny), storage, reference)
    assert model.states is not None
    clip = backend.clip_of(profile)
    key = model.states.key_for(clip)
    good = stored_bytes(storage, key)
    if damage == "garbage":
        bad = b"\x00not a state at all" * 10
    elif damage == "truncated":
        bad = good[: len(good) // 2]
    elif damage == "bit-flip":
        flipped = bytearray(good)
        flipped[-100] ^= 0x40  # a value in the last tensor's data: the header still parses
        bad = bytes(flipped)
    elif damage == "other-model":
        # A state another model made (float32, not int8), stored under this model's key.
        _, other_model, _ = started(
            pocket_settings(tiny, pocket_quantize="off"), storage, reference
        )
        other_model.state_for(clip)
        assert other_model.states is not None
        bad = stored_bytes(storage, other_model.states.key_for(clip))
    else:
        # The state of another voice's clip, stored under this clip's key.
        _, another, _ = started(pocket_settings(tiny), storage, reference)
        other_clip = as_sample(speakers["high"]).audio[: 3 * 24000]
        another.state_for(other_clip)
        bad = stored_bytes(storage, another.states.key_for(other_clip))  # type: ignore[union-attr]
    storage.write_artifact(key, bad)
    speech = backend.synthesise(TEXT, profile)  # never fails the speech
    assert speech.seconds > 0.5
    assert calls[0] == 1  # heard the clip again
    assert same_state(model.state_for(clip), state)
    assert stored_bytes(storage, key) != bad  # rewritten (safetensors' header order varies)
    # The next engine reads the rewritten state.
    backend, _, calls = started(pocket_settings(tiny), storage, reference)
    backend.synthesise(TEXT, profile)
    assert calls[0] == 0


def test_forgetting_a_voice_deletes_its_states(
    tiny: Path,
    storage: Storage,
    reference: CpuReferenceBackend,
    speakers: dict[str, Speaker],
    voice: tuple[SpeakerProfile, dict[str, dict[str, torch.Tensor]]],
) -> None:
    profile, _ = voice
    backend, model, calls = started(pocket_settings(tiny), storage, reference)
    assert model.states is not None
    clip = backend.clip_of(profile)
    key = model.states.key_for(clip)
    backend.synthesise(TEXT, profile)
    assert calls[0] == 0
    # Another model's state of the same voice (the operator changed pocket_quantize).
    _, float32, _ = started(pocket_settings(tiny, pocket_quantize="off"), storage, reference)
    float32.state_for(clip)
    assert float32.states is not None
    other_key = float32.states.key_for(clip)
    stored_bytes(storage, other_key)
    # Another voice's state stays.
    other_clip = as_sample(speakers["high"]).audio[: 3 * 24000]
    float32.state_for(other_clip)
    backend.forget(profile)
    for gone in (key, other_key):
        with pytest.raises(NotStored):
            stored_bytes(storage, gone)
    stored_bytes(storage, float32.states.key_for(other_clip))
    backend.synthesise(TEXT, profile)
    assert calls[0] == 1  # not in memory either
    # Forgetting a voice whose state was never stored, or forgotten already, is no error;
    # nor is one the CPU reference made (it keeps no clip).
    backend.forget(profile)
    backend.forget(profile)
    backend.forget(
        SpeakerProfile(backend="cpu-reference", embedding=[0.0], median_f0_hz=1, params={})
    )


class Failing:
    """The engine's storage, with its reads and writes failing (a bucket that is down)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def local_artifact(self, key: str) -> AbstractContextManager[Path]:
        raise StorageError("the bucket is down")

    def write_artifact(self, key: str, data: bytes) -> None:
        raise StorageError("the bucket is down")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)


def test_a_storage_that_fails_never_fails_the_speech(
    tiny: Path,
    storage: Storage,
    reference: CpuReferenceBackend,
    speakers: dict[str, Speaker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing: Any = Failing(storage)
    backend, _, calls = started(pocket_settings(tiny), failing, reference)
    profile = backend.analyse(as_sample(speakers["low"]))
    assert backend.synthesise(TEXT, profile).seconds > 0.5
    assert calls[0] == 1  # kept in memory all the same
    assert any("bucket is down" in r.getMessage() for r in caplog.records)


def test_the_states_kept_in_memory_are_bounded(
    tiny: Path, reference: CpuReferenceBackend, speakers: dict[str, Speaker]
) -> None:
    assert VoiceSettings().pocket_states_kept == 8
    with pytest.raises(ValidationError, match="pocket_states_kept"):
        VoiceSettings.model_validate({"pocket_states_kept": 0})
    _, model, calls = started(pocket_settings(tiny, pocket_states_kept=2), None, reference)
    audio = as_sample(speakers["low"]).audio
    clips = [audio[i * 24000 : (i + 2) * 24000] for i in range(3)]
    for clip in clips:
        model.state_for(clip)
    assert len(model.kept_states()) == 2
    model.state_for(clips[2])
    model.state_for(clips[1])
    assert calls[0] == 3  # the two latest are kept
    model.state_for(clips[0])
    assert calls[0] == 4  # the oldest was let go


async def test_the_engine_gives_its_storage_to_the_pocket_back_end(
    tmp_path: Path, tiny: Path
) -> None:
    voice = pocket_settings(tiny).model_dump(mode="json")
    services = build_services(make_settings(tmp_path / "engine", voice=voice))
    try:
        backend = services.voice.backend
        assert isinstance(backend, PocketBackend)
        assert backend.storage is services.storage
    finally:
        await services.close()
