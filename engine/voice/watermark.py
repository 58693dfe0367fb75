"""The imperceptible watermark every speech carries (``[engine.voice] watermark``).

Resemble AI's PerTh ("perceptual threshold") net, from the ``resemble-perth`` wheel (MIT,
its trained weights inside, nothing downloaded): an encoder adds a learnt residual to the
speech's magnitude spectrogram under 2 kHz, where the speech itself masks it, and a decoder
says how sure it is that a spectrogram carries it. It survives the codecs members and
Discord use (MP3, Opus down to 16 kbps) and speed changes that the acoustic fingerprint
misses (bench/watermark.py); so a clip of speech made by a Ta-da engine is recognised as
machine-made even when its generation is not in this engine's database.

``resemble-perth`` imports three classes of ``torchaudio.transforms``, and torchaudio has
no build for our torch. Those classes are thin wrappers over ``torch.stft`` /
``torch.istft``; :func:`torchaudio_stand_in` lends perth equivalent ones (same arguments,
defaults and buffers as torchaudio's) for the duration of its import only, then takes them
out of ``sys.modules`` again: transformers and others probe for torchaudio and must keep
finding it absent. Where a real torchaudio is installed, it is used instead.

Blocking code (torch): call it from the job worker or a thread.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.voice.piper_base import BaseVoiceError

# A clip carries the mark when the decoder's confidence is above this (0..1). As they are,
# 67 clips not made here read at most 0.07, and marked speech 0.55 (Opus 16 kbps) to 1.0;
# read at the other rates of :meth:`Watermarker.find`, one flite clip reached 0.496
# (bench/results/watermark.json).
MARK_THRESHOLD = 0.5
# Found only at another rate (one of 2 x RATE_STEPS guesses), a clip must score more: the
# guesses are many chances for a clip not made here to read high (that flite clip's 0.496
# came from one), and calling a member's own voice machine-made is the worse mistake. The
# weakest marked clips found by a guess read 0.53 (pitch -4 semitones) and 0.60 (+4): those
# are given up where they score under this.
GUESS_THRESHOLD = 0.6
# Long clips are judged in windows of this length (the best one counts), so a short
# generated part inside a long recording is not averaged away, and memory stays bounded.
WINDOW_SECONDS = 10.0
# Shorter audio is left as it is (nothing to hear), and not judged.
MIN_SECONDS = 0.1
# The mark holds under a speed change of about +-1.5 % only (bench/results/watermark.json):
# a clip not marked as it is is also read at these rates, 2.5 % apart, which undoes a
# speed change (pitch and tempo) of x0.76..x1.31 exactly, and a pitch-only change up to
# about 4.7 semitones up to a tempo change the decoder tolerates.
RATE_STEP = 1.025
RATE_STEPS = 11
# Those guesses look at this much of the clip, its loudest stretch (their cost is the
# decoder's, once per guess).
GUESS_SECONDS = 2.0
# The packaged checkpoint (PerthNet "implicit", step 250,000) and its hyper-parameters.
_PRETRAINED = ("pretrained", "implicit")
_CHECKPOINT = "perth_net_250000.pth.tar"

FloatAudio = NDArray[np.float32]


@dataclass(frozen=True)
class Detection:
    """What :meth:`Watermarker.find` says of a clip."""

    score: float  # the decoder's confidence, 0..1
    speed: float  # the speed change (pitch and tempo) it was found at; 1.0: as it is

    @property
    def marked(self) -> bool:
        """Above MARK_THRESHOLD as it is, above GUESS_THRESHOLD at another speed."""
        return self.score > (MARK_THRESHOLD if self.speed == 1.0 else GUESS_THRESHOLD)


class WatermarkUnavailable(BaseVoiceError):
    """The watermark is on but its net cannot be loaded (resemble-perth missing or broken)."""


def _stand_in_transforms() -> types.ModuleType:
    """A ``torchaudio.transforms`` with the three classes perth imports, built as
    torchaudio 2.x builds them (``transforms/_transforms.py`` and
    ``functional/functional.py``: ``spectrogram`` / ``inverse_spectrogram``)."""
    import torch
    from torch import Tensor, nn

    class Spectrogram(nn.Module):
        """torchaudio's ``Spectrogram`` for what perth uses: ``power=None`` (the complex
        STFT), no extra padding, no normalisation."""

        window: Tensor

        def __init__(
            self,
            n_fft: int = 400,
            win_length: int | None = None,
            hop_length: int | None = None,
            pad: int = 0,
            window_fn: Callable[..., Tensor] = torch.hann_window,
            power: float | None = 2.0,
            normalized: bool | str = False,
            wkwargs: dict[str, Any] | None = None,
            center: bool = True,
            pad_mode: str = "reflect",
            onesided: bool = True,
        ) -> None:
            super().__init__()
            if power is not None or pad or normalized:
                raise NotImplementedError("the torchaudio stand-in has only power=None, pad=0")
            self.n_fft = n_fft
            self.win_length = win_length if win_length is not None else n_fft
            self.hop_length = hop_length if hop_length is not None else self.win_length // 2
            window = window_fn(self.win_length, **(wkwargs or {}))
            # A (persistent) buffer as in torchaudio: perth's checkpoint holds it.
            self.register_buffer("window", window)
            self.center, self.pad_mode, self.onesided = center, pad_mode, onesided

        def forward(self, waveform: Tensor) -> Tensor:
            shape = waveform.size()
            spec = torch.stft(
                waveform.reshape(-1, shape[-1]),
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                win_length=self.win_length,
                window=self.window,
                center=self.center,
                pad_mode=self.pad_mode,
                normalized=False,
                onesided=self.onesided,
                return_complex=True,
            )
            return spec.reshape(shape[:-1] + spec.shape[-2:])

    class InverseSpectrogram(nn.Module):
        """torchaudio's ``InverseSpectrogram``, without padding or normalisation."""

        window: Tensor

        def __init__(
            self,
            n_fft: int = 400,
            win_length: int | None = None,
            hop_length: int | None = None,
            pad: int = 0,
            window_fn: Callable[..., Tensor] = torch.hann_window,
            normalized: bool | str = False,
            wkwargs: dict[str, Any] | None = None,
            center: bool = True,
            pad_mode: str = "reflect",
            onesided: bool = True,
        ) -> None:
            super().__init__()
            if pad or normalized:
                raise NotImplementedError("the torchaudio stand-in has only pad=0, unnormalised")
            self.n_fft = n_fft
            self.win_length = win_length if win_length is not None else n_fft
            self.hop_length = hop_length if hop_length is not None else self.win_length // 2
            self.register_buffer("window", window_fn(self.win_length, **(wkwargs or {})))
            self.center, self.onesided = center, onesided

        def forward(self, spectrogram: Tensor, length: int | None = None) -> Tensor:
            if not spectrogram.is_complex():
                raise ValueError("Expected `spectrogram` to be complex dtype.")
            shape = spectrogram.size()
            waveform = torch.istft(
                spectrogram.reshape(-1, shape[-2], shape[-1]),
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                win_length=self.win_length,
                window=self.window,
                center=self.center,
                normalized=False,
                onesided=self.onesided,
                length=length,
                return_complex=False,
            )
            return waveform.reshape(shape[:-2] + waveform.shape[-1:])

    class TimeStretch(nn.Module):
        """Built by perth (its checkpoint holds the buffer) but only used in training."""

        def __init__(
            self, hop_length: int | None = None, n_freq: int = 201, fixed_rate: float | None = None
        ) -> None:
            super().__init__()
            hop = hop_length if hop_length is not None else n_freq - 1
            self.register_buffer(
                "phase_advance", torch.linspace(0, math.pi * hop, n_freq)[..., None]
            )

        def forward(self, *_: object, **__: object) -> Tensor:
            raise RuntimeError("TimeStretch is not in the torchaudio stand-in (training only)")

    module = types.ModuleType("torchaudio.transforms")
    module.Spectrogram = Spectrogram  # type: ignore[attr-defined]
    module.InverseSpectrogram = InverseSpectrogram  # type: ignore[attr-defined]
    module.TimeStretch = TimeStretch  # type: ignore[attr-defined]
    return module


@contextlib.contextmanager
def torchaudio_stand_in() -> Iterator[None]:
    """``torchaudio`` and ``torchaudio.transforms`` in ``sys.modules`` for the block only,
    unless a real torchaudio is importable (then nothing changes)."""
    if "torchaudio" in sys.modules or importlib.util.find_spec("torchaudio") is not None:
        yield
        return
    transforms = _stand_in_transforms()
    package = types.ModuleType("torchaudio")
    package.transforms = transforms  # type: ignore[attr-defined]
    package.__path__ = []  # a package, so "torchaudio.transforms" imports from it
    added = {"torchaudio": package, "torchaudio.transforms": transforms}
    sys.modules.update(added)
    try:
        yield
    finally:
        for name, module in added.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


# Importing perth changes sys.modules for a moment: one import at a time in this process.
_IMPORT_LOCK = threading.Lock()


def _import_perth() -> tuple[Any, Any, Any]:
    """perth's ``PerthNet``, ``PerthConfig`` and ``PerthImplicitWatermarker``."""
    with _IMPORT_LOCK, torchaudio_stand_in(), warnings.catch_warnings():
        # perth.perth_net imports pkg_resources (deprecated, still in our setuptools pin).
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        try:
            watermarker = importlib.import_module(
                "perth.perth_net.perth_net_implicit.perth_watermarker"
            )
            config = importlib.import_module("perth.perth_net.perth_net_implicit.config")
            model = importlib.import_module("perth.perth_net.perth_net_implicit.model.perth_net")
        except ImportError as exc:
            raise WatermarkUnavailable(
                f"the watermark needs resemble-perth ({exc}); install the engine's ml extra, "
                "or set [engine.voice] watermark = false"
            ) from exc
    return model.PerthNet, config.PerthConfig, watermarker.PerthImplicitWatermarker


class Watermarker:
    """PerTh's packaged net: :meth:`apply` marks speech, :meth:`detect` finds the mark.

    Loaded once (on first use or :meth:`load`) and shared by every worker thread of one
    engine, like the voice back end; inference keeps no state, so threads may share it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._perth: Any = None

    @property
    def loaded(self) -> bool:
        return self._perth is not None

    def load(self) -> None:
        """Import perth and load its packaged weights (blocking, about a second)."""
        with self._lock:
            if self._perth is not None:
                return
            import torch
            import yaml

            perth_net, perth_config, implicit = _import_perth()
            folder = resources.files("perth.perth_net").joinpath(*_PRETRAINED)
            try:
                hp = perth_config(**yaml.safe_load(folder.joinpath("hparams.yaml").read_text()))
                net = perth_net(hp)
                with resources.as_file(folder.joinpath(_CHECKPOINT)) as path:
                    state = torch.load(path, map_location="cpu", weights_only=True)
                net.load_state_dict(state["model"])  # strict: the stand-in's buffers included
            except (OSError, KeyError, RuntimeError, TypeError) as exc:
                raise WatermarkUnavailable(
                    f"the watermark's weights cannot be loaded: {exc}"
                ) from exc
            net.eval()
            self._perth = implicit(run_name=None, perth_net=net)

    @property
    def net(self) -> Any:
        """perth's ``PerthNet`` (loaded on first use)."""
        self.load()
        return self._perth.perth_net

    def apply(self, samples: FloatAudio, rate: int) -> FloatAudio:
        """``samples`` (mono float, any rate) with the mark, same length and rate."""
        import torch

        audio = np.asarray(samples, dtype=np.float32)
        if len(audio) < MIN_SECONDS * rate:
            return audio
        self.load()
        with torch.inference_mode():
            marked = np.asarray(self._perth.apply_watermark(audio, sample_rate=rate), np.float32)
        # The inverse STFT drops the last partial hop: those few ms stay as they were.
        marked = np.concatenate([marked[: len(audio)], audio[len(marked) :]])
        return np.clip(marked, -1.0, 1.0).astype(np.float32)

    def find(self, samples: FloatAudio, rate: int) -> Detection:
        """Whether ``samples`` carry the mark as they are (:meth:`detect`), or else played
        at another speed (:data:`RATE_STEPS` guesses each way on the loudest
        :data:`GUESS_SECONDS`, best first found): what the trace route asks."""
        import librosa

        score = self.detect(samples, rate)
        best = Detection(score, 1.0)
        excerpt = _loudest(np.asarray(samples, dtype=np.float32), rate, GUESS_SECONDS)
        if score > MARK_THRESHOLD or len(excerpt) < MIN_SECONDS * rate:
            return best
        target = self.net.hp.sample_rate
        # Read as if recorded at rate * g: a clip sped up by 1 / g is undone.
        factors = [RATE_STEP**step for step in range(-RATE_STEPS, RATE_STEPS + 1) if step]
        guesses = [
            np.asarray(librosa.resample(excerpt, orig_sr=rate * g, target_sr=target), np.float32)
            for g in factors
        ]
        for g, guess_score in zip(factors, self._batch_scores(guesses), strict=True):
            if guess_score > best.score:
                best = Detection(round(guess_score, 4), round(1 / g, 4))
        return best

    def _batch_scores(self, signals: list[FloatAudio]) -> list[float]:
        """The decoder's confidence for each signal (at the net's rate), in one batch: five
        times cheaper than one by one. Shorter ones are padded with silence, which the
        decoder's mask leaves out."""
        import torch

        net = self.net
        with torch.inference_mode():
            mags = [net.ap.signal_to_magphase(torch.from_numpy(x))[0] for x in signals]
            frames = max(m.shape[-1] for m in mags)
            batch = torch.zeros(len(mags), mags[0].shape[0], frames)
            for i, mag in enumerate(mags):
                batch[i, :, : mag.shape[-1]] = mag
            scores = net.decoder(batch).clip(0.0, 1.0)
        return [float(v) for v in scores]

    def detect(self, samples: FloatAudio, rate: int) -> float:
        """How surely ``samples`` carry the mark, 0..1 (above :data:`MARK_THRESHOLD`: yes):
        the decoder's confidence over each :data:`WINDOW_SECONDS` window, the best one."""
        import torch

        audio = np.asarray(samples, dtype=np.float32)
        if len(audio) < MIN_SECONDS * rate:
            return 0.0
        self.load()
        step = int(WINDOW_SECONDS * rate)
        starts = list(range(0, len(audio), step))
        # A last window under a second is judged with the one before it.
        if len(starts) > 1 and len(audio) - starts[-1] < rate:
            starts.pop()
        best = 0.0
        with torch.inference_mode():
            for i, start in enumerate(starts):
                end = starts[i + 1] if i + 1 < len(starts) else len(audio)
                score = self._perth.get_watermark(audio[start:end], sample_rate=rate, round=False)
                best = max(best, float(np.asarray(score).max()))
        return round(best, 4)


def _loudest(audio: FloatAudio, rate: int, seconds: float) -> FloatAudio:
    """The ``seconds`` of ``audio`` with the most energy (steps of a tenth of a second)."""
    n = int(seconds * rate)
    if len(audio) <= n:
        return audio
    hop = max(1, rate // 10)
    energy = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    starts = np.arange(0, len(audio) - n + 1, hop)
    start = int(starts[np.argmax(energy[starts + n] - energy[starts])])
    return audio[start : start + n]
