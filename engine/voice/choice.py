"""Which back end ``[engine.voice] backend = "auto"`` runs, and which models it pulls.

On a host where torch sees a CUDA GPU, Qwen3-TTS (the stronger clone, engine/voice/qwen3.py)
once ``tada-engine models pull`` has fetched it; otherwise Pocket TTS (real time on a CPU),
itself the CPU reference until pulled. Torch is imported only when Qwen3-TTS is pulled.
"""

from __future__ import annotations

from pathlib import Path

from engine.voice.settings import VoiceBackendName, VoiceSettings


def cuda_present() -> bool:
    """Whether torch sees a CUDA GPU (False without torch)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def qwen3_pulled(settings: VoiceSettings) -> bool:
    """Whether ``qwen3_model`` is a folder with its codec (pulled, or a local model)."""
    folder = Path(settings.qwen3_model).expanduser()
    return (folder / "config.json").is_file() and (
        folder / "speech_tokenizer" / "config.json"
    ).is_file()


def chosen_backend(settings: VoiceSettings, *, cuda: bool | None = None) -> VoiceBackendName:
    """The back end ``settings`` run: ``backend`` itself unless "auto" (see the module);
    ``cuda``: whether a GPU is present (default: ask torch, only when it matters)."""
    if settings.backend is not VoiceBackendName.AUTO:
        return settings.backend
    if qwen3_pulled(settings) and (cuda_present() if cuda is None else cuda):
        return VoiceBackendName.QWEN3
    return VoiceBackendName.POCKET
