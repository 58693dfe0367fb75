"""Speaker similarity with resemblyzer's voice encoder (its weights ship in the wheel).

A raw cosine means little to a member (two strangers score about 0.55 on resemblyzer):
:class:`Calibration` maps it to 0-100 % between "a different speaker" and "the same
speaker", measured on the evaluation set, and :func:`likeness` puts that in words.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.model_loading import loading_models

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

                # Plain torch modules, built while an image or voice model may be loading in
                # another thread (patching torch for the process): under the process-wide lock.
                with loading_models():
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

    def partials(self, audio: NDArray[Any], sample_rate: int) -> NDArray[np.float32]:
        """Embeddings of the 1.6 s windows of ``audio`` (about 1.3 per second of speech)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from resemblyzer import preprocess_wav

            encoder = self._load()
            wav = preprocess_wav(np.asarray(audio, dtype=np.float32), source_sr=sample_rate)
            if wav.size < ENCODER_RATE * 2:
                return np.zeros((0, 256), dtype=np.float32)
            with self._lock:
                _, partial, _ = encoder.embed_utterance(wav, return_partials=True)
        return np.asarray(partial, dtype=np.float32)


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


class Likeness(StrEnum):
    """A calibrated similarity in words, for members."""

    CLOSE = "close"  # where two recordings of one person usually land
    SOMEWHAT = "somewhat"  # clearly nearer than a stranger, clearly not the same voice
    FAR = "far"  # where a different person usually lands


@dataclass(frozen=True)
class Calibration:
    """Where one encoder's cosine lands for different speakers and for the same speaker.

    Measured by ``bench/voice_quality.py`` on its evaluation speakers (none made from the
    base voice): ``different`` is the median cosine of one speaker's recording against
    another's, ``same`` the median of two recordings of one speaker. A score maps the
    first to 0 and the second to 1, so a stranger reads about 0% instead of "60%".
    """

    encoder: str
    different: float
    same: float

    def score(self, cos: float) -> float:
        """0.0 (a typical different speaker) .. 1.0 (a second recording of the speaker)."""
        return float(min(1.0, max(0.0, (cos - self.different) / (self.same - self.different))))

    def percent(self, cos: float | None) -> int | None:
        return None if cos is None else round(100 * self.score(cos))


def likeness(percent: int) -> Likeness:
    """Words for a calibrated percentage.

    Below about a third, a different speaker often scores as much (the evaluation's 90th
    percentile of different-speaker pairs sits near 30% on both encoders).
    """
    if percent >= 70:
        return Likeness.CLOSE
    if percent >= 35:
        return Likeness.SOMEWHAT
    return Likeness.FAR


# From bench/results/voice_quality.json ("calibration"); tests/engine/voice/
# test_voice_quality.py checks them against a fresh evaluation.
RESEMBLYZER = Calibration("resemblyzer", different=0.56, same=0.95)
DVECTOR = Calibration("voicefilter-dvector", different=0.23, same=0.93)
