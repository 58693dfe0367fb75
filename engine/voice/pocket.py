"""The neural back end for CPU hosts: Kyutai Pocket TTS (code MIT, weights CC-BY-4.0).

A 100 M-parameter flow language model over the Mimi codec's latents: it hears the speaker's
own sample as its voice prompt and speaks the text in that voice, with no training per voice,
faster than real time on two CPU cores (its authors: about 6x on an Apple M4, 2.3-2.5x on a
4-vCPU x86 cloud VM; ours is in ``bench/results/voice_pocket.json``). It also runs on a CUDA
GPU (``neural_device``).

Weights come from ``tada-engine models pull`` (with no argument it pulls what the config
names): the language's ``model.safetensors`` from ``kyutai/pocket-tts`` (the voice-cloning
checkpoint; the hub asks each account to accept its terms once, then ``HF_TOKEN``) and its
``tokenizer.json`` from ``kyutai/pocket-tts-without-voice-cloning``, both at the revisions the
pinned pocket-tts package's config names. They are opened as local files: nothing downloads
at run time. When the model cannot load (not pulled, a broken file), the back end says why in
one log line and serves every request with the CPU reference instead.

A voice keeps its sample's first seconds (16-bit PCM in its profile, like VibeVoice's voices),
so a voice cloned by one zero-shot back end speaks through the other, and a voice the CPU
reference cloned keeps speaking through the CPU reference. The model's state for a voice
(the key/value cache after hearing the clip, 2-14 s of CPU with the released model) is
computed when the voice is cloned (or on its first use), stored through the engine's storage
(:mod:`engine.voice.pocket_states`: any worker, after a restart too, reads it instead of
hearing the clip again) and kept in memory for the ``pocket_states_kept`` most recent voices.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.model_loading import loading_models
from engine.storage import Storage
from engine.voice.audio import Sample, normalise, speech_dbfs
from engine.voice.backend import (
    Progress,
    SpeakerProfile,
    Speech,
    VoiceBackend,
    pcm16_b64,
    pcm16_from_b64,
    stream_speech,
)
from engine.voice.neural import NeuralUnavailable, Placement, machine_placement
from engine.voice.pocket_states import (
    ModelState,
    StoredStates,
    clip_id,
    forget_clip,
    model_identity,
)
from engine.voice.random_pocket import hf_file, import_pocket
from engine.voice.settings import PocketQuantize, VoiceBackendName, VoiceSettings
from engine.voice.similarity import SpeakerEncoder
from engine.voice.zero_shot import ZeroShotBackend

log = logging.getLogger(__name__)
NAME = "pocket"
SAMPLE_RATE = 24000
# Back ends whose profiles keep a voice prompt clip (``reference_pcm16``) a zero-shot model
# can speak from.
ZERO_SHOT = ("pocket", "neural", "qwen3")
# What progress expects: English read aloud runs about 14 characters per second.
TYPICAL_CHARS_PER_SECOND = 14.0
# A streamed speech's pieces: the first as soon as this much audio is decoded (what a
# listener waits for), the next ones each this much longer (fewer, larger pieces).
FIRST_PIECE_S = 0.4
PIECE_S = 1.5


def pocket_config(settings: VoiceSettings) -> dict[str, Any]:
    """The model's config: ``pocket_config`` when set, else the packaged language's."""
    import yaml

    from engine.voice.random_pocket import language_config

    if settings.pocket_config is None:
        try:
            return language_config(settings.pocket_language)
        except FileNotFoundError as exc:
            raise NeuralUnavailable(
                f"pocket-tts has no model for language {settings.pocket_language!r}"
            ) from exc
    data: dict[str, Any] = yaml.safe_load(settings.pocket_config.read_text(encoding="utf-8"))
    return data


def required_files(config: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """The (hub id, file, revision) a config loads: the weights with voice cloning and the
    tokenizer. Local paths are not listed (nothing to pull)."""
    wanted = [str(config["weights_path"]), str(config["flow_lm"]["lookup_table"]["tokenizer_path"])]
    return [hf_file(path) for path in wanted if path.startswith("hf://")]


class NotPulled(NeuralUnavailable):
    """The pocket model's files are not in their pulled folders (never pulled, or partly)."""


def _local(path: str, folder: str, what: str) -> str:
    """An ``hf://`` path in the config -> the file in its pulled folder (or refuse)."""
    if not path.startswith("hf://"):
        return path
    repo, name, _ = hf_file(path)
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise NotPulled(
            f"the pocket model's {what} ({repo}) was never pulled: run `tada-engine models "
            "pull` (nothing downloads at run time)"
        )
    file = root / name
    if not file.is_file():
        raise NotPulled(
            f"{file} is missing: run `tada-engine models pull` again (it fetches the language's "
            "files)"
        )
    return str(file)


def local_config(settings: VoiceSettings) -> dict[str, Any]:
    """The config with every hub path replaced by its pulled file."""
    config = pocket_config(settings)
    if "weights_path" not in config:
        raise NeuralUnavailable("the pocket config names no weights_path")
    config = {k: v for k, v in config.items() if k != "weights_path_without_voice_cloning"}
    config["weights_path"] = _local(str(config["weights_path"]), settings.pocket_model, "weights")
    table = dict(config["flow_lm"]["lookup_table"])
    table["tokenizer_path"] = _local(
        str(table["tokenizer_path"]), settings.pocket_tokenizer, "tokenizer"
    )
    config["flow_lm"] = {**config["flow_lm"], "lookup_table": table}
    return config


def quantize_mode(settings: VoiceSettings, placement: Placement) -> PocketQuantize:
    """What runs as int8: as asked on a CPU; nothing on a GPU (dynamic int8 is CPU-only)."""
    if placement.device != "cpu":
        return PocketQuantize.OFF
    # PocketQuantize(): a copy made with model_copy(update=...) holds the plain string.
    return PocketQuantize(settings.pocket_quantize)


def weights_kind(settings: VoiceSettings, placement: Placement) -> str:
    """float32; int8 (the language model's layers, pocket-tts's own); or int8 in the flow
    head and the codec decoder too."""
    mode = quantize_mode(settings, placement)
    if mode is PocketQuantize.OFF:
        return "float32"
    return "int8" if mode is PocketQuantize.BACKBONE else "int8 with the flow head and codec"


def quantize_heads(model: Any) -> None:
    """int8 dynamic quantization of the flow head and of the codec decoder's transformer
    (``pocket_quantize = "all"``), on top of pocket-tts's own (the language model's layers).

    The flow head goes through pocket-tts's own function (its ``flow_net`` group, with the
    backend it picks: torchao when installed, else torch.ao); the codec decoder's transformer
    through torch.ao's ``quantize_dynamic``, which pocket-tts's attention layers accept (the
    key/value cache stays float32). The codec's convolutions and its encoder (voice prompts)
    stay float32.
    """
    import warnings

    import torch
    from pocket_tts.quantization import apply_dynamic_int8

    with warnings.catch_warnings():
        # torch.ao's quantize_dynamic warns, every call, that it will move to torchao.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        apply_dynamic_int8(model.flow_lm, {"flow_net"})
        torch.ao.quantization.quantize_dynamic(
            model.mimi.decoder_transformer, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )


def state_identity(settings: VoiceSettings, placement: Placement) -> str:
    """What a voice state of this model is stored under, with its clip
    (:func:`engine.voice.pocket_states.model_identity`); NotPulled before a pull."""
    return model_identity(
        pocket_config(settings),
        Path(str(local_config(settings)["weights_path"])),
        quantize_mode(settings, placement).value,
        placement.device,
    )


class PocketModel:
    """A loaded Pocket TTS model on one device; one generation at a time."""

    def __init__(
        self, settings: VoiceSettings, placement: Placement, states: StoredStates | None = None
    ) -> None:
        import torch
        import yaml

        self.settings = settings
        self.placement = placement
        self._torch = torch
        tts_model = import_pocket()
        # pocket-tts logs several INFO lines per sentence (timers): warnings only, unless
        # the operator set its level.
        pocket_log = logging.getLogger("pocket_tts")
        if pocket_log.level == logging.NOTSET:
            pocket_log.setLevel(logging.WARNING)
        config = local_config(settings)
        with tempfile.TemporaryDirectory(prefix="tada-pocket-") as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
            # Under the process-wide lock: no other model is built while this one is.
            with loading_models():
                model: Any = tts_model.load_model(
                    config=str(path),
                    temp=settings.pocket_temperature,
                    eos_threshold=settings.pocket_eos_threshold,
                    quantize=quantize_mode(settings, placement) is not PocketQuantize.OFF,
                )
                if quantize_mode(settings, placement) is PocketQuantize.ALL:
                    quantize_heads(model)
        self.model: Any = model.to(placement.device).eval()
        if not getattr(self.model, "has_voice_cloning", True):
            raise NeuralUnavailable("these pocket weights cannot clone voices")
        self._lock = threading.Lock()
        # Voice states in memory, most recently used last (about 6 MB each for a 10 s clip
        # with the released model), and in the engine's storage.
        self._states: OrderedDict[str, ModelState] = OrderedDict()
        self.states = states
        # What a voice state of this model holds (layers, keys, dtypes): a stored one is
        # checked against it.
        from pocket_tts.modules.stateful_module import init_states

        self._template: ModelState = init_states(
            self.model.flow_lm, batch_size=1, sequence_length=1
        )
        # torch's intra-op threads for new threads when a generation started (put back by
        # the pinned pipeline threads as they end).
        self._threads_before = torch.get_num_threads()
        self._wrap_pipeline_threads()

    def _wrap_pipeline_threads(self) -> None:
        """pocket-tts generates and decodes in two threads that run side by side: each runs
        under ``torch.inference_mode`` (pocket-tts's own ``no_grad`` still tracks tensor
        versions: 2-5 % of the generation thread's CPU, measured) and, with
        ``pocket_threads``, at that many intra-op threads, set in that thread as it starts.

        With 1, two threads on a 2-core machine keep both cores busy without the OpenMP
        oversubscription (4 threads on 2 cores) of torch's process-wide setting, as
        pocket-tts itself sets; 0 (the default) leaves torch's setting: on a shared, loaded
        machine its extra threads won a bigger CPU share and ran faster
        (bench/results/voice_pocket.json, ``variants_compared``). torch's setting for
        threads not started yet is put back as each pipeline thread ends.
        """
        threads = self.settings.pocket_threads if self.placement.device == "cpu" else 0
        torch = self._torch

        def wrapped(run: Callable[..., Any]) -> Callable[..., Any]:
            def in_thread(*args: Any, **kwargs: Any) -> Any:
                if threads:
                    torch.set_num_threads(threads)
                try:
                    # The voice's state arrives deep-copied (copy_state=True): its tensors
                    # are ordinary ones, updated in place here, which inference mode allows.
                    with torch.inference_mode():
                        return run(*args, **kwargs)
                finally:
                    if threads:
                        torch.set_num_threads(self._threads_before)

            return in_thread

        for name in ("_decode_audio_worker", "_autoregressive_generation"):
            setattr(self.model, name, wrapped(getattr(self.model, name)))

    def state_for(self, clip: NDArray[np.float32]) -> ModelState:
        """The model's state after hearing ``clip`` (24 kHz): kept in memory, else read
        from the engine's storage, else computed (and stored for every worker)."""
        torch = self._torch
        key = clip_id(clip)
        with self._lock:
            state = self._states.get(key)
            if state is not None:
                self._states.move_to_end(key)
                return state
            stored = self.states.load(key, self._template) if self.states is not None else None
            if stored is not None:
                state = {
                    module: {k: t.to(self.placement.device) for k, t in values.items()}
                    for module, values in stored.items()
                }
            else:
                audio = torch.from_numpy(np.ascontiguousarray(clip))[None]
                with torch.inference_mode():
                    state = self.model.get_state_for_audio_prompt(audio.to(self.placement.device))
            self._keep(key, state)
        if stored is None and self.states is not None:
            # Outside the lock: a generation need not wait for the store.
            self.states.save(key, state)
        return state

    def _keep(self, key: str, state: ModelState) -> None:
        self._states[key] = state
        self._states.move_to_end(key)
        while len(self._states) > self.settings.pocket_states_kept:
            self._states.popitem(last=False)

    def kept_states(self) -> list[str]:
        """The clips (their SHA-256) whose states are in memory, oldest first."""
        with self._lock:
            return list(self._states)

    def let_go(self, clip: NDArray[np.float32]) -> None:
        """Let go of ``clip``'s state in memory (the stored one stays)."""
        with self._lock:
            self._states.pop(clip_id(clip), None)

    def stream(
        self, clip: NDArray[np.float32], text: str, stop: threading.Event
    ) -> Iterator[NDArray[np.float32]]:
        """Audio chunks (24 kHz) of ``text`` in the voice of ``clip`` as they are decoded.

        Holds the model while it runs; ``stop`` ends the generation at the next frame.
        """
        state = self.state_for(clip)
        with self._lock:
            self._threads_before = self._torch.get_num_threads()
            chunks = self.model.generate_audio_stream(state, text, copy_state=True, stop=stop)
            try:
                for chunk in chunks:
                    yield np.asarray(chunk.detach().float().cpu().numpy(), dtype=np.float32)
            finally:
                # The generator's threads stop at the next frame; wait for them, so the
                # next generation never runs beside this one.
                stop.set()
                for _ in chunks:
                    pass

    def generate(
        self,
        clip: NDArray[np.float32],
        text: str,
        on_chunk: Callable[[int], None] | None = None,
    ) -> NDArray[np.float32]:
        """All of ``text``; ``on_chunk(samples so far)`` after each chunk may raise to stop."""
        parts: list[NDArray[np.float32]] = []
        done = 0
        stop = threading.Event()
        stream = self.stream(clip, text, stop)
        try:
            for chunk in stream:
                parts.append(chunk)
                done += chunk.size
                if on_chunk is not None:
                    on_chunk(done)
        finally:
            close: Any = getattr(stream, "close", None)
            if close is not None:
                close()
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(parts).astype(np.float32)

    def describe(self) -> str:
        return f"{self.placement.device}, {weights_kind(self.settings, self.placement)}"


class PocketBackend(ZeroShotBackend[PocketModel]):
    """Pocket TTS for clones and speech, resemblyzer for similarity, the CPU reference as the
    fallback (and for voices the CPU reference made). Thread-safe; loads on first use."""

    name = NAME
    sample_rate_of_model = SAMPLE_RATE

    def __init__(
        self,
        settings: VoiceSettings,
        encoder: SpeakerEncoder | None = None,
        fallback: VoiceBackend | None = None,
        storage: Storage | None = None,
    ) -> None:
        super().__init__(settings, encoder, fallback)
        # Where voice states are stored for every worker (None: in memory only).
        self.storage = storage

    def _load(self) -> PocketModel:
        placement = machine_placement(self.settings)
        return PocketModel(self.settings, placement, self._stored_states(placement))

    def _stored_states(self, placement: Placement) -> StoredStates | None:
        """This model's voice states in the engine's storage (None: no storage given)."""
        if self.storage is None:
            return None
        return StoredStates(self.storage, state_identity(self.settings, placement))

    @staticmethod
    def clip_of(profile: SpeakerProfile) -> NDArray[np.float32]:
        """The voice prompt a zero-shot voice keeps (24 kHz)."""
        clip = pcm16_from_b64(str(profile.params["reference_pcm16"]))
        if int(profile.params.get("sample_rate", SAMPLE_RATE)) != SAMPLE_RATE:
            raise NeuralUnavailable("this voice's clip is not at 24 kHz; clone it again")
        return clip

    def forget(self, profile: SpeakerProfile) -> None:
        """A deleted voice: its model states go, from memory and from the engine's storage
        (every model's; no error when there are none). Never loads the model. Raises
        StorageError when the store cannot delete them."""
        if profile.backend not in ZERO_SHOT or "reference_pcm16" not in profile.params:
            return
        clip = pcm16_from_b64(str(profile.params["reference_pcm16"]))
        with self._lock:
            model = self._model  # loaded or not: forgetting never loads it
        if model is not None:
            model.let_go(clip)
        if self.storage is not None:
            forget_clip(self.storage, clip_id(clip))

    def _loaded_what(self, model: PocketModel) -> str:
        what = self.settings.pocket_config or self.settings.pocket_language
        return f"pocket model ({what}) on {model.describe()}"

    def _load_failed(self, exc: Exception) -> None:
        if self.settings.backend is VoiceBackendName.AUTO and isinstance(exc, NotPulled):
            # The default on a host that has not pulled yet (offline start): not an error,
            # the CPU reference is the designed fallback.
            log.warning(
                "voice: no neural voice model pulled yet, so the CPU reference "
                "(Piper + WORLD conversion, not a neural clone) serves every voice; "
                "run `tada-engine models pull` (make run does) and restart "
                "for Pocket TTS clones"
            )
        else:
            super()._load_failed(exc)

    def describe(self) -> str:
        model = self.settings.pocket_config or self.settings.pocket_language
        what = f"{self.name} (Pocket TTS {model}, resemblyzer similarity)"
        if self.unavailable is not None:
            return f"{what} unavailable ({self.unavailable}); using {self.fallback.describe()}"
        try:
            placement = machine_placement(self.settings)
            local_config(self.settings)  # its files pulled? (the model loads later)
        except NotPulled:
            return (
                f"{what} not pulled yet (`tada-engine models pull`); using "
                f"{self.fallback.describe()}"
            )
        except NeuralUnavailable as exc:
            return f"{what} unavailable ({exc})"
        return f"{what} on {placement.device}, {weights_kind(self.settings, placement)}"

    def analyse(self, sample: Sample) -> SpeakerProfile:
        """Check the sample is speech, embed it, keep its first seconds as the voice prompt."""
        if self.model() is None:
            return self.fallback.analyse(sample)
        profile, clip = self.clip_profile(sample)
        model = self.model()
        if model is not None:
            model.state_for(pcm16_from_b64(pcm16_b64(clip)))  # the first speech starts sooner
        return profile

    def synthesise(
        self, text: str, profile: SpeakerProfile, progress: Progress | None = None
    ) -> Speech:
        model = self.model() if profile.backend in ZERO_SHOT else None
        if model is None:
            # A voice the CPU reference cloned keeps speaking through it; so does every
            # voice when this model cannot load (the reference learns a zero-shot voice
            # from the clip it keeps).
            return self.fallback.synthesise(text, profile, progress)
        if not any(c.isalnum() for c in text):
            # pocket-tts refuses a text with nothing to read: the job says so.
            return Speech(np.zeros(0, dtype=np.float32), SAMPLE_RATE)
        clip = self.clip_of(profile)
        expected = max(1.0, len(text) / TYPICAL_CHARS_PER_SECOND * SAMPLE_RATE)

        def on_chunk(samples: int) -> None:
            if progress is not None:
                progress(min(0.99, samples / expected))

        audio = model.generate(clip, text, on_chunk)
        if progress is not None:
            progress(1.0)
        if audio.size:
            audio = normalise(audio, SAMPLE_RATE, self.settings.target_dbfs)
        return Speech(audio, SAMPLE_RATE)

    def stream(
        self, text: str, profile: SpeakerProfile, progress: Progress | None = None
    ) -> Iterator[Speech]:
        """The model's own stream, in pieces of :data:`FIRST_PIECE_S` then :data:`PIECE_S`.

        The level of the whole speech is not known while it is made: every piece gets the
        gain that brings the first one to the target level (peaks softly limited).
        """
        model = self.model() if profile.backend in ZERO_SHOT else None
        if model is None:
            yield from stream_speech(self.fallback, text, profile, progress)
            return
        if not any(c.isalnum() for c in text):
            return
        clip = self.clip_of(profile)
        expected = max(1.0, len(text) / TYPICAL_CHARS_PER_SECOND * SAMPLE_RATE)
        target = self.settings.target_dbfs
        gain: float | None = None
        pending: list[NDArray[np.float32]] = []
        done = 0
        stop = threading.Event()
        chunks = model.stream(clip, text, stop)

        def piece() -> Speech:
            nonlocal gain
            audio = np.concatenate(pending).astype(np.float32)
            pending.clear()
            if gain is None:
                level = speech_dbfs(audio, SAMPLE_RATE)
                gain = min(target - level, 40.0) if np.isfinite(level) else 0.0
            scaled = np.clip(audio * 10.0 ** (gain / 20.0), -0.99, 0.99)
            return Speech(scaled.astype(np.float32), SAMPLE_RATE)

        try:
            for chunk in chunks:
                pending.append(chunk)
                done += chunk.size
                if progress is not None:
                    progress(min(0.99, done / expected))
                wanted = FIRST_PIECE_S if gain is None else PIECE_S
                if sum(p.size for p in pending) >= wanted * SAMPLE_RATE:
                    yield piece()
            if pending:
                yield piece()
        finally:
            close: Any = getattr(chunks, "close", None)
            if close is not None:
                close()
        if progress is not None:
            progress(1.0)
