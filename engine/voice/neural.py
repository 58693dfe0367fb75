"""The neural zero-shot back end: VibeVoice 1.5B (MIT licence) through transformers.

The model hears the speaker's own sample as its voice prompt and speaks the text in that
voice: no training per voice. It is for GPU workers (CUDA, bfloat16 or float16); on a CPU
it works but is far slower than real time. Weights come from ``tada-engine models pull``
(a hub id, resolved to the pulled folder by the settings) or a local folder, and are
opened with ``local_files_only``: nothing downloads at run time. When the model cannot
load (not pulled, no GPU where one was asked for, a broken folder), the back end says why
in one log line and serves every request with the CPU reference instead.

Why VibeVoice: MIT weights, a published speaker similarity of 0.689 on Seed-TTS test-en
(WavLM-large; the ground-truth recordings score about 0.73), and it ships inside the
installed transformers (``VibeVoiceForConditionalGeneration``), so it needs no second
environment.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.model_loading import loading_models
from engine.voice.audio import Sample, normalise
from engine.voice.backend import (
    Progress,
    SpeakerProfile,
    Speech,
    VoiceBackend,
    pcm16_from_b64,
)
from engine.voice.piper_base import BaseVoiceError
from engine.voice.settings import NeuralDevice, NeuralDtype, VoiceSettings
from engine.voice.zero_shot import ZeroShotBackend

log = logging.getLogger(__name__)
NAME = "neural"
SAMPLE_RATE = 24000
# VibeVoice's acoustic tokenizer turns 3200 samples (at 24 kHz) into one latent frame.
FRAMES_PER_SECOND = 7.5
# The generation cap: no text is read slower than this, plus a little lead-in and tail.
MIN_CHARS_PER_SECOND = 6.0
CAP_EXTRA_SECONDS = 2.0
# What progress expects: English read aloud runs about 14 characters per second.
TYPICAL_CHARS_PER_SECOND = 14.0
SPEAKER = "0"
# VibeVoice's prompt layout (the one its processor documents), used when a model folder
# ships no chat template of its own.
CHAT_TEMPLATE = """\
{%- set system_prompt = system_prompt | default(" Transform the text provided by various \
speakers into speech output, utilizing the distinct voice of each respective speaker.\\n") -%}
{{ system_prompt -}}
{%- set audio_bos_token = audio_bos_token | default("<|vision_start|>") %}
{%- set audio_eos_token = audio_eos_token | default("<|vision_end|>") %}
{%- set audio_token = audio_token | default("<|vision_pad|>") %}
{%- set ns = namespace(speakers_with_audio="") %}
{%- for message in messages %}
    {%- set role = message['role'] %}
    {%- set content = message['content'] %}
    {%- set has_audio = content | selectattr('type', 'equalto', 'audio') | list | length > 0 %}
    {%- if has_audio and role not in ns.speakers_with_audio %}
        {%- set ns.speakers_with_audio = ns.speakers_with_audio + role + "," %}
    {%- endif %}
{%- endfor %}

{%- if ns.speakers_with_audio %}
{{ " Voice input:\\n" }}
{%- for speaker in ns.speakers_with_audio.rstrip(',').split(',') %}
{%- if speaker %}
 Speaker {{ speaker }}:{{ audio_bos_token }}{{ audio_token }}{{ audio_eos_token }}{{ "\\n" }}
{%- endif %}
{%- endfor %}
{%- endif %}
 Text input:{{ "\\n" }}

{%- for message in messages %}
    {%- set role = message['role'] %}
    {%- set text_items = message['content'] | selectattr('type', 'equalto', 'text') | list %}
    {%- for item in text_items %}
 Speaker {{ role }}: {{ item['text'] }}{{ "\\n" }}
    {%- endfor %}
{%- endfor %}
 Speech output:{{ "\\n" }}{{ audio_bos_token }}"""


class NeuralUnavailable(BaseVoiceError):
    """The neural model cannot run here; the message says why and what to do."""


@dataclass(frozen=True)
class Placement:
    """Where the model runs: a torch device and dtype, by name."""

    device: str  # "cuda" or "cpu"
    dtype: str  # "bfloat16", "float16" or "float32"


def choose_placement(
    device: NeuralDevice, dtype: NeuralDtype, *, cuda: bool, bf16: bool
) -> Placement:
    """The device and dtype for the settings, given what the machine has.

    ``cuda``: whether torch sees a CUDA GPU; ``bf16``: whether that GPU computes bfloat16
    (Ampere and later). Half precision is the point on a GPU (half the memory, tensor
    cores); the CPU computes float32 unless told otherwise.
    """
    if device is NeuralDevice.CUDA and not cuda:
        raise NeuralUnavailable(
            "[engine.voice] neural_device = 'cuda' but torch sees no CUDA GPU "
            "(a CPU-only torch build, or no driver): install the CUDA build with `make gpu`"
        )
    where = (
        "cuda" if device is NeuralDevice.CUDA or (device is NeuralDevice.AUTO and cuda) else "cpu"
    )
    if dtype is not NeuralDtype.AUTO:
        return Placement(where, dtype.value)
    if where == "cpu":
        return Placement("cpu", "float32")
    return Placement("cuda", "bfloat16" if bf16 else "float16")


def machine_placement(settings: VoiceSettings) -> Placement:
    """:func:`choose_placement` for this machine."""
    import torch

    cuda = torch.cuda.is_available()
    bf16 = bool(cuda and torch.cuda.is_bf16_supported())
    return choose_placement(settings.neural_device, settings.neural_dtype, cuda=cuda, bf16=bf16)


def describe_on_machine(
    what: str, unavailable: str | None, fallback: VoiceBackend, settings: VoiceSettings
) -> str:
    """A GPU back end's one-line description: where it runs, or why it cannot and what serves."""
    if unavailable is not None:
        return f"{what} unavailable ({unavailable}); using {fallback.describe()}"
    try:
        placement = machine_placement(settings)
    except NeuralUnavailable as exc:
        return f"{what} unavailable ({exc})"
    device = placement.device
    if device == "cuda":
        import torch

        device = f"cuda ({torch.cuda.get_device_name(0)})"
    return f"{what} on {device}, {placement.dtype}"


def not_pulled(model: str) -> NeuralUnavailable:
    """The refusal for a model setting that is neither a local folder nor a pulled model."""
    return NeuralUnavailable(
        f"{model!r} is neither a local folder nor a pulled model: run "
        f"`tada-engine models pull {model}` (nothing downloads at run time)"
    )


def model_folder(settings: VoiceSettings) -> Path:
    """The local folder of ``neural_model``; a hub id that was never pulled is refused."""
    path = Path(settings.neural_model).expanduser()
    if path.is_dir():
        return path
    raise not_pulled(settings.neural_model)


def speech_frame_cap(text: str, frames_per_second: float, *, least: int) -> int:
    """The most frames a model making ``frames_per_second`` may spend on ``text`` (at least
    ``least``): a bound on the speech's duration, whatever the model."""
    seconds = len(text) / MIN_CHARS_PER_SECOND + CAP_EXTRA_SECONDS
    return max(least, int(seconds * frames_per_second))


def frame_cap(text: str) -> int:
    """The most latent frames ``text`` may take: a bound on the speech's duration."""
    return speech_frame_cap(text, FRAMES_PER_SECOND, least=1)


class VibeVoiceModel:
    """A loaded VibeVoice model and processor on one device; one generation at a time."""

    def __init__(self, folder: Path, placement: Placement, settings: VoiceSettings) -> None:
        import torch
        from transformers import VibeVoiceForConditionalGeneration, VibeVoiceProcessor

        self.folder = folder
        self.placement = placement
        self.settings = settings
        self._torch = torch
        dtype = getattr(torch, placement.dtype)
        # transformers sets the process's default dtype and patches torch while it builds
        # the model: under the process-wide lock, or an image model built meanwhile breaks.
        with loading_models():
            self.processor: Any = VibeVoiceProcessor.from_pretrained(folder, local_files_only=True)
            model: Any = VibeVoiceForConditionalGeneration.from_pretrained(
                folder, dtype=dtype, local_files_only=True
            )
            self.model: Any = model.to(placement.device).eval()
        self._lock = threading.Lock()
        self.audio_token_id = int(self.model.config.audio_token_id)

    def generate(
        self,
        reference: NDArray[np.float32],
        text: str,
        on_frame: Callable[[int], None] | None = None,
    ) -> NDArray[np.float32]:
        """Speak ``text`` in the voice of ``reference`` (24 kHz); ``on_frame(n)`` is told
        after each audio frame and may raise to stop."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        torch = self._torch
        audio_token = self.audio_token_id

        class EachFrame(StoppingCriteria):
            def __init__(self) -> None:
                self.frames = 0

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                if on_frame is not None and int(input_ids[0, -1]) == audio_token:
                    self.frames += 1
                    on_frame(self.frames)
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        conversation = [
            {
                "role": SPEAKER,
                "content": [{"type": "text", "text": text}, {"type": "audio", "audio": reference}],
            }
        ]
        template = None if self.processor.chat_template else CHAT_TEMPLATE
        with self._lock:
            inputs: Any = self.processor.apply_chat_template(
                conversation,
                chat_template=template,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                processor_kwargs={"audio_kwargs": {"sampling_rate": SAMPLE_RATE}},
            )
            inputs = inputs.to(self.placement.device)
            if "input_values" in inputs:
                inputs["input_values"] = inputs["input_values"].to(self.model.dtype)
            with torch.inference_mode():
                out = self.model.generate(
                    **inputs,
                    max_new_tokens=frame_cap(text) + 2,
                    guidance_scale=self.settings.neural_guidance_scale,
                    num_diffusion_steps=self.settings.neural_diffusion_steps,
                    stopping_criteria=StoppingCriteriaList([EachFrame()]),
                )
        audio = out[0] if isinstance(out, list) else out.audio[0]
        if audio is None:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(audio.detach().float().cpu().numpy().reshape(-1), dtype=np.float32)

    def describe(self) -> str:
        return f"{self.placement.device}, {self.placement.dtype}"


class NeuralBackend(ZeroShotBackend[VibeVoiceModel]):
    """VibeVoice for clones and speech, resemblyzer for similarity, the CPU reference as the
    fallback (and for voices the CPU reference made). Thread-safe; loads on first use."""

    name = NAME
    sample_rate_of_model = SAMPLE_RATE

    def _load(self) -> VibeVoiceModel:
        placement = machine_placement(self.settings)
        return VibeVoiceModel(model_folder(self.settings), placement, self.settings)

    def _loaded_what(self, model: VibeVoiceModel) -> str:
        return f"neural model {self.settings.neural_model} on {model.describe()}"

    def _load_failed(self, exc: Exception) -> None:
        log.error(
            "voice: the neural back end cannot load %s (%s); falling back to the "
            "CPU reference (cpu-reference) for every voice",
            self.settings.neural_model,
            self.unavailable,
        )

    def describe(self) -> str:
        what = f"{self.name} (VibeVoice {self.settings.neural_model}, resemblyzer similarity)"
        return describe_on_machine(what, self.unavailable, self.fallback, self.settings)

    def analyse(self, sample: Sample) -> SpeakerProfile:
        """Check the sample is speech, embed it, keep its first seconds as the voice prompt."""
        if self.model() is None:
            return self.fallback.analyse(sample)
        return self.clip_profile(sample)[0]

    def synthesise(
        self, text: str, profile: SpeakerProfile, progress: Progress | None = None
    ) -> Speech:
        model = self.model() if "reference_pcm16" in profile.params else None
        if model is None:
            # A voice the CPU reference cloned keeps speaking through it; so does every
            # voice when the model cannot load (the reference learns a zero-shot voice from
            # the clip it keeps). A voice the pocket back end cloned keeps the same kind of
            # clip, and VibeVoice speaks from it.
            return self.fallback.synthesise(text, profile, progress)
        reference = pcm16_from_b64(str(profile.params["reference_pcm16"]))
        expected = max(1.0, len(text) / TYPICAL_CHARS_PER_SECOND * FRAMES_PER_SECOND)

        def on_frame(frames: int) -> None:
            if progress is not None:
                progress(min(0.99, frames / expected))

        audio = model.generate(reference, text, on_frame)
        if progress is not None:
            progress(1.0)
        if audio.size:
            audio = normalise(audio, SAMPLE_RATE, self.settings.target_dbfs)
        return Speech(audio, SAMPLE_RATE)
