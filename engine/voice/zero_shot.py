"""What the zero-shot model back ends share (VibeVoice in ``neural.py``, Pocket TTS in
``pocket.py``): the model loaded once on first use, behind a lock, or the reason it cannot
load; the CPU reference as the fallback, sharing the speaker encoder; the sample checked
and its first seconds kept as the voice's prompt; resemblyzer for similarity."""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from engine.voice import world
from engine.voice.audio import Sample, SampleRejected
from engine.voice.backend import SpeakerProfile, Speech, VoiceBackend, pcm16_b64
from engine.voice.reference import MIN_F0_SPREAD, MIN_VOICED_SHARE, SIMILARITY_SECONDS
from engine.voice.settings import VoiceSettings
from engine.voice.similarity import SpeakerEncoder, cosine

log = logging.getLogger(__name__)
M = TypeVar("M")


class ZeroShotBackend(ABC, Generic[M]):
    """A model that speaks in the voice of a kept clip. Thread-safe; loads on first use.
    A subclass names itself (``name``), loads its model (:meth:`_load`) and says what it
    runs on (:meth:`_loaded_what`)."""

    name: str

    def __init__(
        self,
        settings: VoiceSettings,
        encoder: SpeakerEncoder | None = None,
        fallback: VoiceBackend | None = None,
    ) -> None:
        self.settings = settings
        self.encoder = encoder or SpeakerEncoder()
        self._fallback = fallback
        self._lock = threading.Lock()
        self._model: M | None = None
        # Why the model could not load (once known, it is not tried again).
        self.unavailable: str | None = None

    @abstractmethod
    def _load(self) -> M:
        """Load the model (any exception: it cannot load, and the fallback serves)."""

    @abstractmethod
    def _loaded_what(self, model: M) -> str:
        """What loaded, for the log line: ``"pocket model (english) ... on cpu, int8"``."""

    @property
    @abstractmethod
    def sample_rate_of_model(self) -> int:
        """The rate the model speaks at."""

    def _load_failed(self, exc: Exception) -> None:
        """Say why the model cannot load (once); the fallback serves every voice."""
        log.error(
            "voice: the %s back end cannot load (%s); falling back to the CPU reference "
            "(cpu-reference) for every voice",
            self.name,
            self.unavailable,
        )

    @property
    def fallback(self) -> VoiceBackend:
        """The CPU reference, sharing this back end's speaker encoder."""
        with self._lock:
            if self._fallback is None:
                from engine.voice.reference import CpuReferenceBackend

                self._fallback = CpuReferenceBackend(self.settings, encoder=self.encoder)
            return self._fallback

    def model(self) -> M | None:
        """The loaded model, or None when it cannot load (logged once, with the reason)."""
        with self._lock:
            if self._model is None and self.unavailable is None:
                started = time.monotonic()
                try:
                    self._model = self._load()
                except Exception as exc:  # any failure to load means: serve with the CPU reference
                    self.unavailable = str(exc) or type(exc).__name__
                    self._load_failed(exc)
                else:
                    log.info(
                        "voice: %s loaded in %.1f s",
                        self._loaded_what(self._model),
                        time.monotonic() - started,
                    )
            return self._model

    @property
    def sample_rate(self) -> int:
        return self.sample_rate_of_model if self.model() is not None else self.fallback.sample_rate

    @property
    def warm(self) -> bool:
        with self._lock:
            loaded, failed = self._model is not None, self.unavailable is not None
        if failed:
            return self.fallback.warm
        return loaded

    def warm_up(self, stop: threading.Event | None = None) -> None:
        steps: list[Callable[[], object]] = [self.encoder.load, self.model]
        for step in steps:
            if stop is not None and stop.is_set():
                return
            step()
        if self.unavailable is not None:
            self.fallback.warm_up(stop)

    def clip_profile(self, sample: Sample) -> tuple[SpeakerProfile, NDArray[np.float32]]:
        """Check the sample is speech, embed it, keep its first seconds as the voice's
        prompt: the profile, and the clip kept (the model's own array)."""
        try:
            stats = world.speaker_stats(sample.audio, sample.sample_rate)
        except ValueError as exc:
            raise SampleRejected("no voice found in the sample; record yourself speaking") from exc
        if stats.voiced_seconds / max(0.001, sample.speech_seconds) < MIN_VOICED_SHARE:
            raise SampleRejected(
                "no voice found in the sample (it sounds like noise or music); "
                "record yourself speaking"
            )
        if stats.log_f0_std < MIN_F0_SPREAD:
            raise SampleRejected(
                "the sample is a steady tone, not speech; record yourself speaking"
            )
        embedding = self.encoder.embed(sample.audio, sample.sample_rate)
        clip = sample.audio[: int(self.settings.neural_reference_seconds * sample.sample_rate)]
        profile = SpeakerProfile(
            backend=self.name,
            embedding=[round(float(v), 6) for v in embedding],
            median_f0_hz=round(stats.median_f0_hz, 2),
            base_similarity=None,  # no base voice: the model speaks in the sample's voice
            params={"reference_pcm16": pcm16_b64(clip), "sample_rate": sample.sample_rate},
        )
        return profile, clip

    def similarity(self, speech: Speech, profile: SpeakerProfile) -> float:
        head = speech.audio[: int(SIMILARITY_SECONDS * speech.sample_rate)]
        return cosine(self.encoder.embed(head, speech.sample_rate), profile.embedding_array())
