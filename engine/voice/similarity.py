"""Speaker similarity with resemblyzer's voice encoder (its weights ship in the wheel)."""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np
from numpy.typing import NDArray

ENCODER_RATE = 16000


class SpeakerEncoder:
    """Embeds speech as a 256-d unit vector; cosine of two embeddings is their similarity.

    The model loads on first use and is shared by the threads of one worker.
    """

    def __init__(self) -> None:
        self._encoder: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._encoder is None:
                with warnings.catch_warnings():
                    # webrtcvad (a resemblyzer dependency) imports the deprecated pkg_resources.
                    warnings.simplefilter("ignore")
                    from resemblyzer import VoiceEncoder

                self._encoder = VoiceEncoder("cpu", verbose=False)
            return self._encoder

    def load(self) -> None:
        """Load the model now rather than on the first embedding."""
        self._load()

    def embed(self, audio: NDArray[Any], sample_rate: int) -> NDArray[np.float32]:
        """The speaker embedding of ``audio`` (trimmed of long silences first)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from resemblyzer import preprocess_wav

            encoder = self._load()
            wav = preprocess_wav(np.asarray(audio, dtype=np.float32), source_sr=sample_rate)
            if wav.size < ENCODER_RATE // 2:
                # Too little speech survived the trimming: embed what there is.
                wav = _resample(np.asarray(audio, dtype=np.float32), sample_rate)
            with self._lock:
                embedding = encoder.embed_utterance(wav)
        return np.asarray(embedding, dtype=np.float32)


def _resample(audio: NDArray[np.float32], sample_rate: int) -> NDArray[np.float32]:
    import librosa

    return np.asarray(
        librosa.resample(audio, orig_sr=sample_rate, target_sr=ENCODER_RATE), dtype=np.float32
    )


def cosine(a: NDArray[Any], b: NDArray[Any]) -> float:
    """Cosine similarity of two embeddings (1.0: the same voice)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))
