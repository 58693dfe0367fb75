"""The GPU zero-shot back end: Qwen3-TTS 12 Hz Base (Apache-2.0, code and weights).

The model hears the speaker's kept clip (its speaker encoder's x-vector) and speaks the text
in that voice, in any of its ten languages: no training per voice. Chosen for GPU hosts
over VibeVoice (withdrawn by Microsoft, not for commercial use), Higgs Audio v2 (a Llama-3
derived community licence) and VoxCPM / CosyVoice 3 (their packages need torchaudio, which
has no build for our torch): docs/engine/voice-backends.md has the comparison and sources.

Its model code is ``qwen-tts-hf`` (Qwen's own ``qwen-tts`` 0.1.1 with the transformers-5
patch of QwenLM/Qwen3-TTS#360), installed with ``--no-deps``: its declared dependencies pin
torchaudio, sox and gradio, none of which the 12 Hz Base models use. The one module of it
that imports torchaudio (``tokenizer_25hz.vq.speech_vq``, the 25 Hz tokenizer's quantiser:
the 12 Hz models never build it) is lent a stand-in for the import only, as
``engine/voice/watermark.py`` does for perth.

Weights come from ``tada-engine models pull`` (a hub id, resolved to the pulled folder by
the settings, at a pinned revision) or a local folder, and are opened with
``local_files_only``: nothing downloads at run time. When the model cannot load, the back
end says why in one log line and the CPU reference serves every request.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import sys
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.model_loading import loading_models
from engine.voice.audio import Sample, normalise
from engine.voice.backend import Progress, SpeakerProfile, Speech, pcm16_from_b64
from engine.voice.neural import (
    NeuralUnavailable,
    Placement,
    describe_on_machine,
    machine_placement,
    not_pulled,
    speech_frame_cap,
)
from engine.voice.settings import VoiceSettings
from engine.voice.zero_shot import ZeroShotBackend

log = logging.getLogger(__name__)
NAME = "qwen3"
SAMPLE_RATE = 24000
# The 12 Hz codec: one frame (16 codebook entries) per 1920 samples at 24 kHz.
FRAMES_PER_SECOND = 12.5
# The generation cap: neural.speech_frame_cap (no text is read slower than 6 characters a
# second, plus a little lead-in and tail).
# What progress expects: English read aloud runs about 14 characters per second.
TYPICAL_CHARS_PER_SECOND = 14.0
# Voice prompts (speaker embeddings) kept in memory, by clip.
PROMPTS_KEPT = 32
# The module of qwen-tts that imports torchaudio (and sox, onnxruntime): only the 25 Hz
# tokenizer uses it.
_TORCHAUDIO_MODULE = "qwen_tts.core.tokenizer_25hz.vq.speech_vq"


class _NotIn12Hz:
    """What the 25 Hz tokenizer's classes are here: refused if ever built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NeuralUnavailable(
            "the Qwen3-TTS 25 Hz tokenizer needs torchaudio, which has no build for this "
            "torch: use a 12 Hz model (Qwen/Qwen3-TTS-12Hz-1.7B-Base or -0.6B-Base)"
        )


@contextmanager
def _speech_vq_stand_in() -> Iterator[None]:
    """The 25 Hz quantiser module in ``sys.modules`` while qwen-tts imports, unless a real
    torchaudio is importable (then qwen-tts imports its own)."""
    if _TORCHAUDIO_MODULE in sys.modules or importlib.util.find_spec("torchaudio") is not None:
        yield
        return
    stand_in = types.ModuleType(_TORCHAUDIO_MODULE)
    stand_in.WhisperEncoderVQ = _NotIn12Hz  # type: ignore[attr-defined]
    stand_in.XVectorExtractor = _NotIn12Hz  # type: ignore[attr-defined]
    sys.modules[_TORCHAUDIO_MODULE] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(_TORCHAUDIO_MODULE) is stand_in:
            del sys.modules[_TORCHAUDIO_MODULE]


def _default_rope(
    config: Any, device: Any = None, seq_len: Any = None, layer_type: Any = None
) -> Any:
    """The unscaled RoPE frequencies, from a transformers-4 config (``rope_theta``) as
    Qwen3-TTS's configs are, or a transformers-5 one (``rope_parameters``)."""
    import torch

    params: dict[str, Any] = {}
    rope_parameters = getattr(config, "rope_parameters", None)
    if isinstance(rope_parameters, dict):
        nested = rope_parameters.get(layer_type) if layer_type is not None else None
        params = nested if isinstance(nested, dict) else rope_parameters
    try:
        base = float(config.rope_theta)
    except AttributeError:
        base = float(params["rope_theta"])
    factor = float(
        params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
    )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * factor)
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float)
    return 1.0 / (base ** (exponents / dim)), 1.0


def _repair_rope_registry() -> None:
    """qwen-tts-hf registers a "default" RoPE function for the whole process that reads
    ``config.rope_theta``; transformers 5 then prefers it over every model's own default
    (``PreTrainedModel._init_weights``), and models whose configs keep the theta in
    ``rope_parameters`` (Mimi, Qwen2...) fail to build ("no attribute 'rope_theta'"). The
    entry is replaced by one that reads either."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if "default" in ROPE_INIT_FUNCTIONS:
        ROPE_INIT_FUNCTIONS["default"] = _default_rope


def _repair_codec_encoder() -> None:
    """qwen-tts-hf's 12 Hz codec encoder subclasses transformers' ``MimiModel`` and drops
    its decoder half by assigning ``upsample = None``, ``decoder_transformer = None``; from
    transformers 5.24 those are read-only properties of ``MimiModel`` (the halves moved into
    ``MimiModel.encoder`` / ``.decoder``), so the codec cannot be built at all ("property
    'upsample' ... has no setter"). Its constructor is replaced by one that builds Mimi
    and drops ``decoder`` (Qwen's own decoder speaks; the encoder only reads the prompt)."""
    from qwen_tts.core.tokenizer_12hz import modeling_qwen3_tts_tokenizer_v2 as codec
    from transformers import MimiModel

    encoder_class: Any = codec.Qwen3TTSTokenizerV2Encoder
    if getattr(encoder_class, "_tada_repaired", False) or not isinstance(
        getattr(MimiModel, "upsample", None), property
    ):
        return

    def __init__(self: Any, config: Any) -> None:
        MimiModel.__init__(self, config)
        self.config = config
        self.decoder = None
        self.post_init()

    encoder_class.__init__ = __init__
    encoder_class._tada_repaired = True
    # Its checkpoint keeps Mimi's flat transformers-4 key layout (``encoder.layers``,
    # ``encoder_transformer.``, ``downsample.``); transformers 5.24 renames those for its
    # own MimiModel only, never for a subclass defined outside it, so the published
    # encoder's weights would be left out (random) with a warning. The same renamings,
    # registered for this class.
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )

    mimi = get_checkpoint_conversion_mapping("MimiModel") or []
    encoder_side = [
        rename
        for rename in mimi
        if any(p.startswith(("^encoder", "^downsample")) for p in rename.source_patterns)
    ]
    if encoder_side:
        register_checkpoint_conversion_mapping(
            "Qwen3TTSTokenizerV2Encoder", encoder_side, overwrite=True
        )


def _repair_tied_keys() -> None:
    """Two of qwen-tts's classes declare ``_tied_weights_keys`` as a list (transformers 4);
    transformers 5 expects a mapping and ``save_pretrained`` fails ("'list' object has no
    attribute 'keys'"). Qwen3-TTS ties nothing (``tie_word_embeddings`` is false in every
    config), so the mapping is empty."""
    from qwen_tts.core.models import modeling_qwen3_tts as modeling

    for name in (
        "Qwen3TTSTalkerCodePredictorModelForConditionalGeneration",
        "Qwen3TTSTalkerForConditionalGeneration",
    ):
        cls: Any = getattr(modeling, name)
        if isinstance(cls.__dict__.get("_tied_weights_keys"), list):
            cls._tied_weights_keys = {}


def _repair_cache_name() -> None:
    """transformers 5.24 renamed ``past_key_values`` to ``cache``: generation passes
    ``cache=`` to ``forward`` and reads ``outputs["cache"]``, and every ``ModelOutput``'s
    constructor renames a ``past_key_values=`` argument to ``cache=``. qwen-tts's two output
    classes declare ``past_key_values`` (so building them fails: "unexpected keyword
    argument 'cache'") and its two generating models take ``past_key_values``. The outputs
    are rebuilt with a ``cache`` field (``past_key_values`` reads it), and the models'
    ``forward`` takes ``cache`` as its ``past_key_values``."""
    import dataclasses
    import functools

    from qwen_tts.core.models import modeling_qwen3_tts as modeling

    for name in ("Qwen3TTSTalkerCodePredictorOutputWithPast", "Qwen3TTSTalkerOutputWithPast"):
        old: Any = getattr(modeling, name)
        names = [f.name for f in dataclasses.fields(old)]
        if "past_key_values" not in names:
            continue
        fields = [
            ("cache" if n == "past_key_values" else n, Any, dataclasses.field(default=None))
            for n in names
        ]
        new: Any = dataclasses.make_dataclass(
            name,
            fields,
            bases=(old.__mro__[1],),
            namespace={
                "past_key_values": property(lambda self: self.cache),
                "__module__": old.__module__,
            },
        )
        setattr(modeling, name, new)
    for name in (
        "Qwen3TTSTalkerCodePredictorModelForConditionalGeneration",
        "Qwen3TTSTalkerForConditionalGeneration",
    ):
        cls: Any = getattr(modeling, name)
        forward = cls.forward
        if getattr(forward, "_tada_cache", False):
            continue

        @functools.wraps(forward)
        def with_cache(self: Any, *args: Any, _forward: Any = forward, **kwargs: Any) -> Any:
            if "cache" in kwargs:
                kwargs["past_key_values"] = kwargs.pop("cache")
            return _forward(self, *args, **kwargs)

        with_cache._tada_cache = True  # type: ignore[attr-defined]
        cls.forward = with_cache


def qwen_tts_modules() -> types.SimpleNamespace:
    """qwen-tts's classes (imported once, with the stand-in); NeuralUnavailable if absent."""
    try:
        with _speech_vq_stand_in():
            import qwen_tts
            from qwen_tts.core.models import (
                Qwen3TTSConfig,
                Qwen3TTSForConditionalGeneration,
                Qwen3TTSProcessor,
            )
            from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import (
                Qwen3TTSTokenizerV2Config,
            )
            from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import (
                Qwen3TTSTokenizerV2Model,
            )
        _repair_rope_registry()
        _repair_codec_encoder()
        _repair_tied_keys()
        _repair_cache_name()
    except ImportError as exc:
        raise NeuralUnavailable(
            f"the Qwen3-TTS model code is not installed ({exc}): run `make gpu`, or "
            "`pip install --no-deps -c constraints.txt qwen-tts-hf`"
        ) from exc
    return types.SimpleNamespace(
        Qwen3TTSModel=qwen_tts.Qwen3TTSModel,
        VoiceClonePromptItem=qwen_tts.VoiceClonePromptItem,
        Qwen3TTSConfig=Qwen3TTSConfig,
        Qwen3TTSForConditionalGeneration=Qwen3TTSForConditionalGeneration,
        Qwen3TTSProcessor=Qwen3TTSProcessor,
        Qwen3TTSTokenizerV2Config=Qwen3TTSTokenizerV2Config,
        Qwen3TTSTokenizerV2Model=Qwen3TTSTokenizerV2Model,
    )


def model_folder(settings: VoiceSettings) -> Path:
    """The local folder of ``qwen3_model``; a hub id that was never pulled is refused."""
    path = Path(settings.qwen3_model).expanduser()
    if path.is_dir() and (path / "speech_tokenizer" / "config.json").is_file():
        return path
    if path.is_dir():
        raise NeuralUnavailable(
            f"{path} has no speech_tokenizer/config.json: not a Qwen3-TTS 12 Hz model folder "
            f"(pull it again: `tada-engine models pull {settings.qwen3_model}`)"
        )
    raise not_pulled(settings.qwen3_model)


def frame_cap(text: str) -> int:
    """The most codec frames ``text`` may take: a bound on the speech's duration."""
    return speech_frame_cap(text, FRAMES_PER_SECOND, least=2)


class Qwen3Model:
    """A loaded Qwen3-TTS Base model and its codec on one device; one generation at a time."""

    def __init__(self, folder: Path, placement: Placement, settings: VoiceSettings) -> None:
        import torch

        qt = qwen_tts_modules()
        self.folder = folder
        self.placement = placement
        self.settings = settings
        self._torch = torch
        dtype = getattr(torch, placement.dtype)
        with loading_models():
            wrapper: Any = qt.Qwen3TTSModel.from_pretrained(
                str(folder), dtype=dtype, local_files_only=True, attn_implementation="sdpa"
            )
            wrapper.model = wrapper.model.to(placement.device).eval()
            codec = wrapper.model.speech_tokenizer
            codec.model = codec.model.to(placement.device).eval()
            codec.device = torch.device(placement.device)
            wrapper.device = torch.device(placement.device)
        if wrapper.model.tts_model_type != "base":
            raise NeuralUnavailable(
                f"{folder} is a Qwen3-TTS {wrapper.model.tts_model_type!r} model; voice "
                "cloning needs a Base model (Qwen/Qwen3-TTS-12Hz-1.7B-Base or -0.6B-Base)"
            )
        self.wrapper: Any = wrapper
        self._item_class: Any = qt.VoiceClonePromptItem
        self._prompts: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def generate(
        self,
        reference: NDArray[np.float32],
        text: str,
        on_frame: Callable[[int], None] | None = None,
        reference_text: str | None = None,
    ) -> NDArray[np.float32]:
        """Speak ``text`` in the voice of ``reference`` (24 kHz); ``on_frame(n)`` is told
        after each codec frame and may raise to stop. With ``reference_text`` (the clip's
        transcript), in Qwen3-TTS's in-context mode."""
        torch = self._torch
        frames = 0

        def each_step(module: Any, args: Any, output: Any) -> None:
            nonlocal frames
            frames += 1
            if on_frame is not None and frames > 1:  # the first call reads the prompt
                on_frame(frames - 1)

        with self._lock:
            hook = self.wrapper.model.talker.register_forward_hook(each_step)
            try:
                with torch.inference_mode():
                    prompt = [self._prompt(reference, reference_text)]
                    wavs, rate = self.wrapper.generate_voice_clone(
                        text=text,
                        language="Auto",
                        voice_clone_prompt=prompt,
                        max_new_tokens=frame_cap(text),
                        temperature=self.settings.qwen3_temperature,
                    )
            finally:
                hook.remove()
        audio = np.asarray(wavs[0], dtype=np.float32).reshape(-1)
        if int(rate) != SAMPLE_RATE:
            import librosa

            audio = librosa.resample(audio, orig_sr=int(rate), target_sr=SAMPLE_RATE)
        return audio

    def _prompt(self, reference: NDArray[np.float32], reference_text: str | None) -> Any:
        """The voice prompt of a clip, computed once per clip: its speaker embedding
        (x-vector) alone, or with ``reference_text`` the in-context prompt (the clip's codec
        codes and transcript too). The x-vector one is built here rather than by
        ``create_voice_clone_prompt``, which would encode the clip with the codec's encoder
        and throw the codes away."""
        digest = hashlib.sha256(np.ascontiguousarray(reference).tobytes())
        digest.update((reference_text or "").encode())
        key = digest.hexdigest()
        item = self._prompts.get(key)
        if item is None and reference_text:
            item = self.wrapper.create_voice_clone_prompt(
                ref_audio=(np.asarray(reference, dtype=np.float32), SAMPLE_RATE),
                ref_text=reference_text,
                x_vector_only_mode=False,
            )[0]
            self._prompts[key] = item
        if item is None:
            embedding = self.wrapper.model.extract_speaker_embedding(
                audio=np.asarray(reference, dtype=np.float32), sr=SAMPLE_RATE
            )
            item = self._item_class(
                ref_code=None,
                ref_spk_embedding=embedding,
                x_vector_only_mode=True,
                icl_mode=False,
                ref_text=None,
            )
            self._prompts[key] = item
            while len(self._prompts) > PROMPTS_KEPT:
                self._prompts.popitem(last=False)
        else:
            self._prompts.move_to_end(key)
        return item

    def describe(self) -> str:
        return f"{self.placement.device}, {self.placement.dtype}"


class Qwen3Backend(ZeroShotBackend[Qwen3Model]):
    """Qwen3-TTS for clones and speech, resemblyzer for similarity, the CPU reference as
    the fallback (and for voices the CPU reference made). Thread-safe; loads on first use."""

    name = NAME
    sample_rate_of_model = SAMPLE_RATE

    def _load(self) -> Qwen3Model:
        placement = machine_placement(self.settings)
        return Qwen3Model(model_folder(self.settings), placement, self.settings)

    def _loaded_what(self, model: Qwen3Model) -> str:
        return f"qwen3 model {self.settings.qwen3_model} on {model.describe()}"

    def describe(self) -> str:
        what = f"{self.name} (Qwen3-TTS {self.settings.qwen3_model}, resemblyzer similarity)"
        return describe_on_machine(what, self.unavailable, self.fallback, self.settings)

    def analyse(self, sample: Sample) -> SpeakerProfile:
        """Check the sample is speech, embed it, keep its first seconds as the voice prompt."""
        if self.model() is None:
            return self.fallback.analyse(sample)
        profile, clip = self.clip_profile(sample)
        if not self.settings.qwen3_in_context:
            return profile
        transcript = self._transcript(clip, sample.sample_rate)
        if not transcript:
            return profile  # nothing heard to read: the x-vector alone
        params = {**profile.params, "reference_text": transcript}
        return profile.model_copy(update={"params": params})

    def _transcript(self, clip: NDArray[np.float32], rate: int) -> str:
        """The clip's transcript (Whisper tiny.en), or "" when it cannot be made."""
        from engine.voice.transcribe import Transcriber, TranscriberUnavailable

        transcriber = getattr(self.fallback, "transcriber", None)
        if not isinstance(transcriber, Transcriber):
            transcriber = Transcriber()
        try:
            return transcriber.transcribe(clip, rate).strip()
        except TranscriberUnavailable as exc:
            log.warning("voice: no transcript of the clip (%s): the x-vector alone", exc)
            return ""

    def synthesise(
        self, text: str, profile: SpeakerProfile, progress: Progress | None = None
    ) -> Speech:
        model = self.model() if "reference_pcm16" in profile.params else None
        if model is None:
            # A voice the CPU reference cloned keeps speaking through it; so does every
            # voice when the model cannot load. Voices the pocket and neural back ends
            # cloned keep the same kind of clip, and Qwen3-TTS speaks from it.
            return self.fallback.synthesise(text, profile, progress)
        reference = pcm16_from_b64(str(profile.params["reference_pcm16"]))
        rate = int(profile.params.get("sample_rate", SAMPLE_RATE))
        if rate != SAMPLE_RATE:
            import librosa

            reference = librosa.resample(reference, orig_sr=rate, target_sr=SAMPLE_RATE)
        expected = max(1.0, len(text) / TYPICAL_CHARS_PER_SECOND * FRAMES_PER_SECOND)

        def on_frame(frames: int) -> None:
            if progress is not None:
                progress(min(0.99, frames / expected))

        said = profile.params.get("reference_text") if self.settings.qwen3_in_context else None
        audio = model.generate(
            np.asarray(reference, dtype=np.float32),
            text,
            on_frame,
            reference_text=str(said) if said else None,
        )
        if progress is not None:
            progress(1.0)
        if audio.size:
            audio = normalise(audio, SAMPLE_RATE, self.settings.target_dbfs)
        return Speech(audio, SAMPLE_RATE)
