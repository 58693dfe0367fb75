"""The seam between jobs and voice models: analyse a sample, synthesise text in a voice.

Two back ends implement it: the CPU reference (:mod:`engine.voice.reference`, Piper + WORLD)
and the neural zero-shot model for GPU workers (:mod:`engine.voice.neural`). Which one runs
is ``[engine.voice] backend``; :func:`engine.voice.handlers.build_backend` builds it.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from engine.voice.audio import Sample

Progress = Callable[[float], None]


class SpeakerProfile(BaseModel):
    """What a back end learnt from a sample, stored with the voice (JSON)."""

    model_config = ConfigDict(frozen=True)

    backend: str
    # resemblyzer embedding of the sample: every back end's output is measured against it.
    embedding: list[float]
    median_f0_hz: float
    # How close the back end's unconverted base voice already is to the sample.
    base_similarity: float | None = None
    # Back-end specific data (the CPU reference keeps F0 statistics and an envelope).
    params: dict[str, Any]

    def embedding_array(self) -> NDArray[np.float32]:
        return np.asarray(self.embedding, dtype=np.float32)


@dataclass(frozen=True)
class Speech:
    """Synthesised speech, mono float32."""

    audio: NDArray[np.float32]
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


class VoiceBackend(Protocol):
    """A voice model the worker can use. Both methods block; call them in the worker."""

    name: str

    @property
    def sample_rate(self) -> int:
        """The rate samples are decoded at and speech comes out at."""
        ...

    def analyse(self, sample: Sample) -> SpeakerProfile:
        """Learn a speaker from a checked, normalised sample (raise SampleRejected)."""
        ...

    def synthesise(
        self, text: str, profile: SpeakerProfile, progress: Progress | None = None
    ) -> Speech:
        """Speak ``text`` in the voice of ``profile``; ``progress`` gets 0..1 and may raise
        to stop the synthesis (a canceled job): the exception comes out of this call."""
        ...

    def similarity(self, speech: Speech, profile: SpeakerProfile) -> float:
        """Cosine of the speaker embeddings of ``speech`` and the profile's sample."""
        ...

    @property
    def warm(self) -> bool:
        """Whether every model is loaded."""
        ...

    def warm_up(self, stop: threading.Event | None = None) -> None:
        """Load every model now (blocks; the worker calls it in the background at start);
        return early, between steps, once ``stop`` is set."""
        ...

    def describe(self) -> str:
        """The back end, its models, device and dtype, in one line for the start-up log."""
        ...


@runtime_checkable
class StreamingBackend(Protocol):
    """A back end that gives speech out piece by piece as it makes it (an optional seam:
    :func:`stream_speech` serves the others with one piece, the whole speech)."""

    def stream(
        self, text: str, profile: SpeakerProfile, progress: Progress | None = None
    ) -> Iterator[Speech]:
        """The speech of ``text`` in pieces that, played back to back, are the speech;
        each is given out as soon as it is made (``progress`` as in ``synthesise``)."""
        ...


def stream_speech(
    backend: VoiceBackend, text: str, profile: SpeakerProfile, progress: Progress | None = None
) -> Iterator[Speech]:
    """``text`` spoken piece by piece: the back end's own stream, or one piece."""
    if isinstance(backend, StreamingBackend):
        yield from backend.stream(text, profile, progress)
        return
    speech = backend.synthesise(text, profile, progress)
    if speech.audio.size:
        yield speech


def pcm16_b64(audio: NDArray[np.float32]) -> str:
    """Audio as base64 of 16-bit PCM (how a voice keeps its prompt clip in its profile)."""
    ints = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
    return base64.b64encode(ints.tobytes()).decode("ascii")


def pcm16_from_b64(data: str) -> NDArray[np.float32]:
    """The clip :func:`pcm16_b64` kept, as float samples."""
    ints = np.frombuffer(base64.b64decode(data), dtype="<i2")
    return (ints.astype(np.float32) / 32767.0).astype(np.float32)
