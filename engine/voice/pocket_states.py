"""Pocket TTS voice states kept in the engine's storage, so any worker speaks a voice's
first sentence without hearing its clip again.

A voice's state is what the model holds after hearing the voice's kept clip: per attention
layer of its language model, the key/value cache (float32), its offset and padding (int64);
about 6 MB for a 10 s clip with the released model, 2-14 s of CPU to compute on two cores.
It depends on the clip and the model only (computing it twice gives the same tensors), so
it is stored once per (clip, model) as an artifact
``voice-states/<clip sha256>/<model identity>.safetensors``, on local disk or in the S3
bucket like any other artifact, and read back by the first speech of the voice in any
process. A deleted voice's folder goes whole (:func:`forget_clip`): every model's state.

Safety: the file is safetensors (tensors and a JSON header; nothing is executed when it is
read, unlike a pickle). Its header names the format, the model identity and the clip it was
made from, and a SHA-256 of every tensor's bytes; a file that does not parse, names another
model or clip, fails its checksum or does not have the layers, keys, dtypes and shapes this
model's state has is not used: the state is computed from the clip again and stored over it.

The model identity (:func:`model_identity`) hashes what the state depends on: pocket-tts's
version, the model's config (its hub paths carry the pinned revisions), the weights file's
size, the int8 quantization actually applied, and the device type. A state made by another
model, revision or quantization is never looked up, and never used if found.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.storage import NotStored, Storage

log = logging.getLogger(__name__)

FORMAT = "tada-pocket-voice-state/1"
PREFIX = "voice-states"
# module name / state key: module names are dotted ("transformer.layers.0.self_attn").
_SEP = "/"

ModelState = dict[str, dict[str, Any]]  # module -> key -> torch.Tensor


class BadState(ValueError):
    """A stored state that cannot be used (why, in the message)."""


def clip_id(clip: NDArray[np.float32]) -> str:
    """The clip's SHA-256 (hex): what a state is stored under, with the model's identity."""
    return hashlib.sha256(np.ascontiguousarray(clip, dtype=np.float32).tobytes()).hexdigest()


def model_identity(config: Mapping[str, Any], weights: Path, quantize: str, device: str) -> str:
    """A short hash of what a voice state depends on (see the module's docstring).

    ``config`` is the model's config as named (with its ``hf://...@revision`` paths, not
    the local files they were pulled to, so every worker with the same pull agrees)."""
    try:
        version = metadata.version("pocket-tts")
    except metadata.PackageNotFoundError:
        version = "unknown"
    parts = {
        "format": FORMAT,
        "pocket_tts": version,
        "config": config,
        "weights_bytes": weights.stat().st_size,
        "quantize": quantize,
        "device": device.split(":")[0],
    }
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _checksum(flat: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    for name in sorted(flat):
        tensor = flat[name]
        digest.update(name.encode("utf-8"))
        digest.update(str(tensor.dtype).encode("ascii"))
        digest.update(repr(tuple(tensor.shape)).encode("ascii"))
        digest.update(tensor.contiguous().view(-1).view(_byte_dtype()).numpy().tobytes())
    return digest.hexdigest()


def _byte_dtype() -> Any:
    import torch

    return torch.uint8


def _header(data: bytes) -> dict[str, Any]:
    """The safetensors file's JSON header (8 bytes of length, then the JSON)."""
    if len(data) < 8:
        raise BadState("shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size <= 0 or 8 + size > len(data):
        raise BadState("its header runs past the end")
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError as exc:
        raise BadState("its header is not JSON") from exc
    if not isinstance(header, dict):
        raise BadState("its header is not a JSON object")
    return header


def dump_state(state: ModelState, identity: str, clip: str) -> bytes:
    """The state as safetensors bytes, its header naming the model, the clip and a checksum."""
    import safetensors.torch

    flat: dict[str, Any] = {}
    for module, values in state.items():
        for key, tensor in values.items():
            if _SEP in module or _SEP in key:
                raise ValueError(f"a state name with {_SEP!r}: {module!r} / {key!r}")
            flat[f"{module}{_SEP}{key}"] = tensor.detach().to("cpu").contiguous()
    meta = {"format": FORMAT, "model": identity, "clip": clip, "sha256": _checksum(flat)}
    data: bytes = safetensors.torch.save(flat, metadata=meta)
    return data


def load_state(data: bytes, identity: str, clip: str, template: ModelState) -> ModelState:
    """The state in ``data`` (on the CPU), checked against the model and clip asked for and
    the layout of ``template`` (a state of this model: the same modules, keys and dtypes;
    shapes equal but for a cache's length). Raises :class:`BadState` saying why not."""
    import safetensors.torch

    meta = _header(data).get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise BadState(f"not a {FORMAT} file")
    if meta.get("model") != identity:
        raise BadState("made by another model (version, revision or quantization)")
    if meta.get("clip") != clip:
        raise BadState("made from another clip")
    try:
        flat = safetensors.torch.load(data)
    except Exception as exc:  # safetensors' own error type differs between versions
        raise BadState(f"its tensors do not load ({exc})") from exc
    if _checksum(flat) != meta.get("sha256"):
        raise BadState("its checksum does not match (a damaged file)")
    state: ModelState = {}
    for name, tensor in flat.items():
        module, _, key = name.partition(_SEP)
        state.setdefault(module, {})[key] = tensor
    _check_layout(state, template)
    return state


def _check_layout(state: ModelState, template: ModelState) -> None:
    if state.keys() != template.keys():
        raise BadState("its layers are not this model's")
    for module, values in template.items():
        if state[module].keys() != values.keys():
            raise BadState(f"{module}: its keys are not this model's")
        for key, like in values.items():
            got = state[module][key]
            if got.dtype != like.dtype or got.dim() != like.dim():
                raise BadState(f"{module}/{key}: not this model's dtype or rank")
            # A cache's length (dim 2) is the prompt's; every other size is the model's.
            fixed = [i for i in range(like.dim()) if not (key == "cache" and i == 2)]
            if any(got.shape[i] != like.shape[i] for i in fixed):
                raise BadState(f"{module}/{key}: shape {tuple(got.shape)} is not this model's")


class StoredStates:
    """Voice states of one model in the engine's storage. Reads and writes never raise
    (a state is only ever a shortcut): a failure is logged and the caller computes."""

    def __init__(self, storage: Storage, identity: str) -> None:
        self.storage = storage
        self.identity = identity

    def key(self, clip: str) -> str:
        return f"{clip_folder(clip)}/{self.identity}.safetensors"

    def key_for(self, clip: NDArray[np.float32]) -> str:
        return self.key(clip_id(clip))

    def load(self, clip: str, template: ModelState) -> ModelState | None:
        """The stored state of ``clip`` (CPU tensors), or None: none stored, or unusable."""
        key = self.key(clip)
        try:
            with self.storage.local_artifact(key) as path:
                data = path.read_bytes()
        except NotStored:
            return None
        except Exception as exc:  # the store is down: compute, as if there were none
            log.warning("voice: cannot read a stored voice state (%s); computing it", exc)
            return None
        try:
            return load_state(data, self.identity, clip, template)
        except BadState as exc:
            log.warning("voice: a stored voice state is not usable (%s); computing it again", exc)
            return None

    def save(self, clip: str, state: ModelState) -> None:
        try:
            self.storage.write_artifact(self.key(clip), dump_state(state, self.identity, clip))
        except Exception as exc:  # kept in memory all the same; the next process recomputes
            log.warning("voice: cannot store a voice state (%s)", exc)

    def delete(self, clip: str) -> None:
        """Delete ``clip``'s state of this model (no error when there is none)."""
        self.storage.delete_artifact(self.key(clip))


def clip_folder(clip: str) -> str:
    """Where the states of ``clip`` (its SHA-256), one per model, are stored."""
    return f"{PREFIX}/{clip}"


def forget_clip(storage: Storage, clip: str) -> None:
    """Delete every stored state of ``clip``, whichever model made it (a deleted voice)."""
    storage.delete_artifacts(clip_folder(clip))
