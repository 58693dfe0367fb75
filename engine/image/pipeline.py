"""The diffusion model the worker keeps loaded: generation, LoRA training and adapter swaps.

One :class:`ImageModel` per worker process holds the base pipeline (SD 1.5, SDXL or FLUX.1
class, or a built-in tiny random model of one of them). LoRAs are loaded into it as named
peft adapters and switched per request, so the base weights are read from disk once.
Everything here is blocking torch code: it runs in job worker threads, serialised by one lock
because a single accelerator runs one thing at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDPMScheduler,
    FluxImg2ImgPipeline,
    FluxPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import convert_state_dict_to_kohya
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import save_file

from engine.image import flux, tiny
from engine.image.settings import TINY_MODEL_LABEL, ImageSettings
from engine.image.types import (
    LoraFit,
    ModelError,
    TrainImage,
    aspect_size,
    nearest_bucket,
    training_buckets,
)
from engine.model_loading import loading_models

log = logging.getLogger(__name__)

# The attention projections the LoRA adapts (diffusers' names; the UNet's of SD 1.5 and SDXL,
# the transformer's of FLUX: its single blocks have no ``to_out``, their MLP fuses it).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# diffusers' lazy module exports read as dummy classes to mypy: pipelines and schedulers
# are typed loosely here, and their real types are checked at run time.
Pipeline = Any
Scheduler = Any
# Adapter name used while training; never "train" (it would shadow nn.Module.train).
_FIT_ADAPTER = "tada_fit"
# ``format`` in the metadata of the LoRA files we write (older ones say "diffusers-lora").
LORA_FILE_FORMAT = "kohya-lora"
# ... and of the FLUX LoRAs we write, in diffusers' layout (see :func:`flux_lora_file`).
FLUX_LORA_FILE_FORMAT = "diffusers-lora"


@dataclass(frozen=True)
class _Conditioning:
    embeds: torch.Tensor
    # SDXL and FLUX: pooled text embeddings; SDXL: the size/crop "time ids".
    pooled: torch.Tensor | None
    time_ids: torch.Tensor | None
    # FLUX: the text tokens' position ids (one set for the whole batch).
    text_ids: torch.Tensor | None = None

    def added_kwargs(self, idx: torch.Tensor | None = None) -> dict[str, Any] | None:
        if self.pooled is None or self.time_ids is None:
            return None
        pooled = self.pooled if idx is None else self.pooled[idx]
        time_ids = self.time_ids if idx is None else self.time_ids[idx]
        return {"text_embeds": pooled, "time_ids": time_ids}

    def select(self, idx: torch.Tensor) -> torch.Tensor:
        return self.embeds[idx]


@dataclass(frozen=True)
class _Bucket:
    """Training examples of one shape, encoded: latents and their text conditioning."""

    size: tuple[int, int]  # width, height in pixels
    latents: torch.Tensor
    cond: _Conditioning


def resolve_device(name: str) -> torch.device:
    """``auto`` picks the first CUDA device when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: float32 on CPU; bfloat16 on GPUs that have it (SDXL's VAE overflows fp16)."""
    if name != "auto":
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
            name
        ]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


_PIPELINES: dict[str, Any] = {
    "sd15": StableDiffusionPipeline,
    "sdxl": StableDiffusionXLPipeline,
    "flux": FluxPipeline,
}
# Each architecture's img2img counterpart, built from the loaded pipeline's own modules.
_IMG2IMG: dict[str, Any] = {
    "sd15": StableDiffusionImg2ImgPipeline,
    "sdxl": StableDiffusionXLImg2ImgPipeline,
    "flux": FluxImg2ImgPipeline,
}


def load_checkpoint(path: Path, dtype: torch.dtype) -> Pipeline:
    """A local SD 1.5 / SDXL / FLUX.1 diffusers checkpoint, the architecture read from its
    ``model_index.json``; never downloads. Call it under :func:`loading_models` (as
    :meth:`ImageModel.from_settings` does)."""
    arch = flux.arch_of_folder(path)
    index = json.loads((path / "model_index.json").read_text())
    extra: dict[str, Any] = {}
    if "safety_checker" in index:
        extra = {"safety_checker": None, "requires_safety_checker": False}
    return _PIPELINES[arch].from_pretrained(
        str(path), torch_dtype=dtype, local_files_only=True, **extra
    )


def load_single_file(path: Path, config: Path | None, dtype: torch.dtype) -> Pipeline:
    """A single-file ``.safetensors`` checkpoint (SD 1.5 / SDXL, or a FLUX.1 transformer),
    the architecture read from its tensor names; never downloads. Call it under
    :func:`loading_models` (as :meth:`ImageModel.from_settings` does).

    A single file holds weights only: ``config`` is a local diffusers folder of the same
    architecture (a pulled base repository) that gives the component configs and the
    tokenizers, and for FLUX the text encoders and VAE the file does not hold. Without it
    diffusers would fetch configs from the hub, which the engine never does at run time.
    """
    arch = flux.arch_of_single_file(path)
    if config is None:
        raise ModelError(
            f"{path} is a single-file {arch} checkpoint: set image.single_file_config to a "
            f"diffusers folder of the same architecture (its configs and tokenizers), e.g. "
            f"one `tada-engine models pull` fetched"
        )
    if flux.arch_of_folder(config) != arch:
        raise ModelError(f"{path} is a {arch} checkpoint but {config} is not a {arch} folder")
    if arch == "flux":
        from diffusers import FluxTransformer2DModel

        transformer = FluxTransformer2DModel.from_single_file(
            str(path),
            config=str(config),
            subfolder="transformer",
            torch_dtype=dtype,
            local_files_only=True,
        )
        return FluxPipeline.from_pretrained(
            str(config), transformer=transformer, torch_dtype=dtype, local_files_only=True
        )
    extra: dict[str, Any] = {}
    if arch == "sd15":
        extra = {"safety_checker": None, "requires_safety_checker": False}
    return _PIPELINES[arch].from_single_file(
        str(path), config=str(config), torch_dtype=dtype, local_files_only=True, **extra
    )


def kohya_lora_state(unet_peft_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A UNet LoRA (peft's state dict) in kohya's key style, the one LoRA files are shared in.

    ``lora_unet_<module path with underscores>.lora_down.weight`` / ``.lora_up.weight`` /
    ``.alpha``, the module paths being diffusers' (as kohya sd-scripts writes SD 1.x LoRAs):
    diffusers' ``load_lora_weights`` converts it back, ComfyUI and A1111 read it as is.
    """
    prefixed = {f"unet.{k}": v for k, v in unet_peft_state.items()}
    return {
        k: v.detach().to("cpu", torch.float32).contiguous()
        for k, v in convert_state_dict_to_kohya(prefixed).items()
    }


def flux_lora_file(
    transformer_peft_state: dict[str, torch.Tensor], rank: int
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A FLUX LoRA's tensors and safetensors metadata exactly as diffusers'
    ``FluxPipeline.save_lora_weights`` writes them (``transformer.<module>.lora_A.weight`` /
    ``lora_B``, the adapter config in the ``lora_adapter_metadata`` header), which diffusers'
    ``load_lora_weights`` and ComfyUI read. Written by diffusers itself, then read back, so
    the layout is always diffusers' own."""
    import tempfile

    from safetensors import safe_open

    state = {
        k: v.detach().to("cpu", torch.float32).contiguous()
        for k, v in transformer_peft_state.items()
    }
    config = {"r": rank, "lora_alpha": rank, "target_modules": list(LORA_TARGETS)}
    with tempfile.TemporaryDirectory() as tmp:
        FluxPipeline.save_lora_weights(
            tmp,
            transformer_lora_layers=state,
            transformer_lora_adapter_metadata=config,
            weight_name="lora.safetensors",
        )
        with safe_open(str(Path(tmp) / "lora.safetensors"), "pt") as fh:
            names = fh.keys()
            tensors = {k: fh.get_tensor(k) for k in names}
            meta = dict(fh.metadata() or {})
    meta.pop("format", None)
    return tensors, meta


def lora_fingerprint(path: Path) -> str:
    """A short id for a LoRA file's current content: its adapter name in the pipeline."""
    stat = path.stat()
    raw = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    return "lora_" + hashlib.sha256(raw).hexdigest()[:16]


class ImageModel:
    """The loaded base pipeline plus the LoRA adapters swapped in and out of it."""

    def __init__(self, pipe: Pipeline, *, label: str, device: torch.device) -> None:
        self.pipe = pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.label = label
        self.device = device
        self.is_xl = isinstance(pipe, StableDiffusionXLPipeline)
        self.is_flux = isinstance(pipe, FluxPipeline)
        self.arch = "flux" if self.is_flux else "sdxl" if self.is_xl else "sd15"
        # What the LoRA adapts: FLUX's transformer, SD's UNet.
        self.denoiser: Any = pipe.transformer if self.is_flux else pipe.unet
        self.dtype: torch.dtype = self.denoiser.dtype
        if self.is_flux:
            # FLUX's VAE config names the native size (1024); the transformer has none.
            self.native_size = int(self.pipe.vae.config.sample_size)
        else:
            self.native_size = int(self.pipe.unet.config.sample_size) * int(
                self.pipe.vae_scale_factor
            )
        self._lock = threading.RLock()
        # The img2img pipeline (upscale, vary), made on first use from the same modules.
        self._img2img_pipe: Pipeline | None = None
        self._adapters: OrderedDict[str, Path] = OrderedDict()
        self.max_adapters = 8
        for module in self._components():
            # Models built from config start in training mode (T5's dropout would make
            # every image differ); from_pretrained's are in eval mode already.
            module.eval()
        self._freeze()

    @classmethod
    def from_settings(cls, settings: ImageSettings) -> ImageModel:
        """Build the configured base model (the tiny random one when none is set)."""
        device = resolve_device(settings.device)
        threads = settings.cpu_threads or (1 if settings.is_tiny else None)
        if device.type == "cpu" and threads:
            # Process-wide. A tiny model gains nothing from threads, and on a busy machine
            # oversubscribed OpenMP threads spin: one thread was 10-30x faster there.
            torch.set_num_threads(threads)
        # The whole build under the process-wide lock: another engine's or back end's load
        # in another thread must not patch torch while these modules are made and moved.
        with loading_models():
            if settings.base_model is None:
                log.warning("image model: %s", TINY_MODEL_LABEL)
                # Built in float32: the tiny model is for correctness, not speed.
                pipe = tiny.build_tiny_pipeline(
                    settings.tiny_seed, settings.tiny_resolution, settings.tiny_arch
                )
            elif settings.base_model.is_file():
                pipe = load_single_file(
                    settings.base_model,
                    settings.single_file_config,
                    resolve_dtype(settings.dtype, device),
                )
            else:
                pipe = load_checkpoint(settings.base_model, resolve_dtype(settings.dtype, device))
            model = cls(pipe, label=settings.model_label, device=device)
        model.max_adapters = settings.generation.max_loaded_adapters
        return model

    @property
    def defaults_key(self) -> str:
        """The :data:`engine.image.settings.ARCH_DEFAULTS` entry of this model."""
        if self.is_flux and not self.pipe.transformer.config.guidance_embeds:
            return "flux-schnell"
        return self.arch

    def aspect_size(
        self, ratio: str, width: int | None = None, height: int | None = None
    ) -> tuple[int, int]:
        """The size of ``ratio`` for this model, about as many pixels as ``width`` x ``height``
        (default: the native square)."""
        side = round(math.sqrt((width or self.native_size) * (height or self.native_size)))
        return aspect_size(ratio, side, self._multiple())

    # -- conditioning ---------------------------------------------------------------------

    def _encode(self, prompts: Sequence[str], ids: Sequence[Sequence[int]]) -> _Conditioning:
        """Text conditioning; ``ids`` per prompt are SDXL's size/crop conditioning:
        original height and width, crop top and left, target height and width."""
        if self.is_flux:
            embeds, pooled, text_ids = flux.encode(self.pipe, list(prompts), self.device)
            return _Conditioning(embeds, pooled, None, text_ids)
        if self.is_xl:
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                list(prompts), device=self.device, do_classifier_free_guidance=False
            )
            time_ids = torch.tensor([list(r) for r in ids], dtype=embeds.dtype).to(self.device)
            return _Conditioning(embeds, pooled, time_ids)
        embeds, _ = self.pipe.encode_prompt(
            list(prompts), self.device, 1, do_classifier_free_guidance=False
        )
        return _Conditioning(embeds, None, None)

    def _latents(self, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        vae = self.pipe.vae
        out = []
        # VAE encode in small chunks: a 50-image SDXL batch at 1024 px would not fit at once.
        for chunk in batch.split(4):
            dist = vae.encode(chunk.to(self.device, dtype=vae.dtype)).latent_dist
            noise = torch.randn(dist.mean.shape, generator=gen).to(self.device, dist.mean.dtype)
            out.append(dist.mean + dist.std * noise)
        latents = torch.cat(out) * vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        return latents - shift * vae.config.scaling_factor if shift else latents

    def _multiple(self) -> int:
        # What the VAE and the UNet's downsamplings (FLUX: its 2x2 patches) divide exactly;
        # diffusers wants 8 too.
        if self.is_flux:
            return math.lcm(8, int(self.pipe.vae_scale_factor) * 2)
        down = len(self.pipe.unet.config.block_out_channels) - 1
        return math.lcm(8, int(self.pipe.vae_scale_factor) * 2**down)

    @torch.no_grad()
    def _buckets(
        self, examples: Sequence[TrainImage], size: int, seed: int, bucketing: bool
    ) -> list[_Bucket]:
        """The examples encoded once (latents and text), grouped by aspect-ratio bucket.

        Encoded before the first step and reused by every step: the VAE and the text
        encoders never run in the training loop. Without ``bucketing`` every image is a
        center-cropped square of ``size``.
        """
        shapes = training_buckets(size, self._multiple()) if bucketing else [(size, size)]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, e in enumerate(examples):
            key = nearest_bucket(*e.image.size, shapes) if bucketing else (size, size)
            groups.setdefault(key, []).append(i)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        out = []
        for (bw, bh), members in sorted(groups.items()):
            tensors, ids = [], []
            for i in members:
                img = examples[i].image
                fitted, top, left = _cover_crop(img, bw, bh)
                tensors.append(_to_tensor(fitted))
                # SDXL conditions on the original size and the crop (as SDXL was trained).
                ids.append(
                    (img.height, img.width, top, left, bh, bw)
                    if bucketing
                    else (size, size, 0, 0, size, size)
                )
            latents = self._latents(torch.stack(tensors), gen)
            cond = self._encode([examples[i].caption for i in members], ids)
            out.append(_Bucket((bw, bh), latents, cond))
        return out

    # -- adapters -------------------------------------------------------------------------
    #
    # What holds between jobs, whatever ran before and however it ended: the pipeline holds
    # exactly the adapters in ``self._adapters`` (no training adapter, nothing half-loaded),
    # no parameter requires grad, and no parameter is an inference tensor (a module built
    # under ``torch.inference_mode`` cannot be trained later). Every entry point restores it.

    def _held_adapters(self) -> set[str]:
        return {a for names in self.pipe.get_list_adapters().values() for a in names}

    def _reconcile(self) -> None:
        """Drop any adapter the pipeline holds that is not a loaded LoRA (a crash's leftovers)."""
        stray = sorted(self._held_adapters() - set(self._adapters))
        if stray:
            log.warning("image model: removing stray adapters %s", stray)
            self._delete_adapters(stray)

    def _delete_adapters(self, names: list[str]) -> None:
        self.pipe.delete_adapters(names)
        # A failed injection can leave a config entry without layers; drop those too.
        for module in self._components():
            config = getattr(module, "peft_config", None)
            if config is not None:
                for name in names:
                    config.pop(name, None)

    def _components(self) -> list[torch.nn.Module]:
        found = [self.denoiser, self.pipe.vae, self.pipe.text_encoder]
        if self.is_xl or self.is_flux:
            found.append(self.pipe.text_encoder_2)
        return found

    def _freeze(self) -> None:
        # peft's set_adapter marks the active adapter trainable; nothing is trained here.
        for module in self._components():
            module.requires_grad_(False)

    def _load_adapter(self, path: Path) -> str:
        name = lora_fingerprint(path)
        if name in self._adapters:
            self._adapters.move_to_end(name)
        else:
            try:
                # From the file, not a loaded dict: diffusers then reads the adapter metadata
                # (lora_alpha) that LoRAs saved by diffusers keep in the safetensors header.
                # peft builds the adapter's layers on the meta device by patching torch for
                # the whole process: under the process-wide lock.
                with loading_models():
                    self.pipe.load_lora_weights(
                        str(path.parent),
                        weight_name=path.name,
                        adapter_name=name,
                        use_safetensors=True,
                        local_files_only=True,
                    )
            except Exception as exc:
                with contextlib.suppress(Exception):  # drop whatever half-loaded
                    self._delete_adapters([name])
                raise ModelError(
                    f"the LoRA {path.name} does not fit the base model: {exc}"
                ) from exc
            self._adapters[name] = path
        # Least recently used adapters leave first: each holds accelerator memory.
        while len(self._adapters) > self.max_adapters:
            old, _ = self._adapters.popitem(last=False)
            self._delete_adapters([old])
        return name

    def _activate(self, lora: Path | None, weight: float) -> None:
        # Adapter weights made here outlive the call: never as inference tensors, even when
        # a caller runs in inference mode.
        with torch.inference_mode(False):
            try:
                self._reconcile()
                if lora is None:
                    if self._adapters:
                        self.pipe.disable_lora()
                    return
                name = self._load_adapter(lora)
                self.pipe.enable_lora()
                self.pipe.set_adapters([name], [weight])
            finally:
                self._freeze()

    def loaded_adapters(self) -> list[str]:
        """Adapter names currently held in the pipeline (least recently used first)."""
        with self._lock:
            return list(self._adapters)

    # -- generation -----------------------------------------------------------------------

    # no_grad, not inference_mode: tensors made during a generation (adapter weights,
    # scheduler state) must stay usable by a later training.
    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        lora: Path | None = None,
        weight: float = 1.0,
        seed: int = 0,
        steps: int = 30,
        guidance_scale: float = 7.0,
        width: int | None = None,
        height: int | None = None,
    ) -> np.ndarray:
        """One image as float32 HxWx3 in [0, 1]; the same arguments give the same pixels."""
        with self._lock:
            self._activate(lora, weight)
            gen = torch.Generator(device="cpu").manual_seed(seed)
            extra: dict[str, Any] = {"negative_prompt": negative_prompt}
            if self.is_flux:
                # FLUX is guidance-distilled: ``guidance_scale`` is its guidance embedding and
                # a negative prompt would need true CFG (twice the cost); it is not used.
                extra = {"max_sequence_length": flux.max_sequence_length(self.pipe)}
            out = self.pipe(
                prompt=prompt,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                width=width or self.native_size,
                height=height or self.native_size,
                generator=gen,
                output_type="np",
                **extra,
            )
            image: np.ndarray = np.asarray(out.images[0], dtype=np.float32)
        return image

    def img2img(self) -> Pipeline:
        """The img2img pipeline of this architecture, sharing every module with the loaded
        one (diffusers' ``from_pipe``: no second copy of the weights, and the LoRA adapters
        loaded into the denoiser apply to both)."""
        with self._lock:
            if self._img2img_pipe is None:
                pipe = _IMG2IMG[self.arch].from_pipe(self.pipe)
                pipe.set_progress_bar_config(disable=True)
                self._img2img_pipe = pipe
            return self._img2img_pipe

    @torch.no_grad()
    def refine(
        self,
        image: Image.Image,
        prompt: str,
        *,
        strength: float,
        negative_prompt: str | None = None,
        lora: Path | None = None,
        weight: float = 1.0,
        seed: int = 0,
        steps: int = 30,
        guidance_scale: float = 7.0,
        width: int | None = None,
        height: int | None = None,
    ) -> np.ndarray:
        """``image`` redrawn by img2img at ``width`` x ``height`` (default: its own size), as
        float32 HxWx3 in [0, 1]: ``strength`` is the share of the denoising redone (an
        upscale: the image resized, then lightly redrawn at the new size; a variation: the
        same size, more redrawn, a new seed). The same arguments give the same pixels."""
        width, height = width or image.width, height or image.height
        multiple = self._multiple()
        if width % multiple or height % multiple:
            raise ModelError(f"{width}x{height} is not a multiple of {multiple} on this model")
        source = image.convert("RGB")
        if source.size != (width, height):
            source = source.resize((width, height), Image.Resampling.LANCZOS)
        # Img2img runs int(steps * strength) of ``steps``: at least one step always runs.
        total = max(steps, math.ceil(1 / strength))
        with self._lock:
            self._activate(lora, weight)
            pipe = self.img2img()
            extra: dict[str, Any] = {"negative_prompt": negative_prompt}
            if self.is_flux:
                # As in generate(): no negative prompt without true CFG; FLUX's img2img
                # resizes to the size it is given, so it is given the source's.
                extra = {
                    "max_sequence_length": flux.max_sequence_length(self.pipe),
                    "width": width,
                    "height": height,
                }
            out = pipe(
                prompt=prompt,
                image=source,
                strength=strength,
                num_inference_steps=total,
                guidance_scale=guidance_scale,
                generator=torch.Generator(device="cpu").manual_seed(seed),
                output_type="np",
                **extra,
            )
            pixels: np.ndarray = np.asarray(out.images[0], dtype=np.float32)
        return pixels

    # -- training -------------------------------------------------------------------------

    @torch.no_grad()
    def denoising_loss(
        self,
        examples: Sequence[TrainImage],
        *,
        lora: Path | None = None,
        resolution: int | None = None,
        seed: int = 0,
        samples: int = 8,
        bucketing: bool = True,
    ) -> float:
        """Mean noise-prediction loss on ``examples`` over fixed noise and timesteps.

        The training objective, measured the same way each call: a LoRA that learned the
        images scores lower than the base model.
        """
        size = resolution or self.native_size
        with self._lock:
            self._activate(lora, 1.0)
            buckets = self._buckets(examples, size, seed, bucketing)
            sched = self._train_scheduler()
            gen = torch.Generator(device="cpu").manual_seed(seed + 1)
            total = 0.0
            for _ in range(samples):
                for b in buckets:
                    latents = b.latents
                    noise = torch.randn(latents.shape, generator=gen).to(self.device, latents.dtype)
                    t = self._draw_t(sched, len(latents), gen)
                    pred, target = self._predict(sched, latents, noise, t, b.cond, None)
                    loss = torch.nn.functional.mse_loss(pred.float(), target.float())
                    total += float(loss) * len(latents) / len(examples)
            if lora is not None:
                self.pipe.disable_lora()
        return total / samples

    def _train_scheduler(self) -> Scheduler:
        """SD's DDPM noise schedule; FLUX (rectified flow) needs none: ``None``."""
        if self.is_flux:
            return None
        return DDPMScheduler.from_config(self.pipe.scheduler.config)

    def _draw_t(self, sched: Scheduler, n: int, gen: torch.Generator) -> torch.Tensor:
        """Training timesteps: DDPM's integer steps, or FLUX's noise levels in (0, 1)."""
        if sched is None:
            return flux.draw_sigmas(n, gen).to(self.device)
        return torch.randint(0, sched.config.num_train_timesteps, (n,), generator=gen).to(
            self.device
        )

    def _predict(
        self,
        sched: Scheduler,
        latents: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
        cond: _Conditioning,
        idx: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = cond.embeds if idx is None else cond.select(idx)
        if self.is_flux:
            assert cond.pooled is not None and cond.text_ids is not None
            pooled = cond.pooled if idx is None else cond.pooled[idx]
            return flux.flow_predict(self.pipe, latents, noise, t, embeds, pooled, cond.text_ids)
        noisy = sched.add_noise(latents, noise, t)
        pred = self.pipe.unet(
            noisy, t, embeds, added_cond_kwargs=cond.added_kwargs(idx), return_dict=False
        )[0]
        if sched.config.prediction_type == "v_prediction":
            return pred, sched.get_velocity(latents, noise, t)
        return pred, noise

    def train_lora(
        self,
        examples: Sequence[TrainImage],
        dest: Path,
        *,
        rank: int,
        steps: int,
        learning_rate: float,
        resolution: int | None = None,
        batch_size: int = 1,
        seed: int = 0,
        bucketing: bool = True,
        metadata: dict[str, str] | None = None,
        on_step: Callable[[int, int, float], None] | None = None,
        options: TrainOptions | None = None,
    ) -> LoraFit:
        """Train a LoRA on the attention projections and save it as safetensors.

        With ``bucketing`` each image keeps its shape: it trains in the aspect-ratio bucket
        nearest to it (about ``resolution``² pixels), a batch drawing from one bucket;
        without, every image is center-cropped to a square. ``on_step(step, steps, loss)``
        runs after every step (progress, cancellation: an exception it raises stops
        training, and the base model is left clean either way). ``options``: precision,
        memory, checkpoints (a training cut off resumes from its checkpoint file at the saved
        step) and the validation image rendered at each checkpoint.
        """
        if not examples:
            raise ModelError("no training images")
        opts = options or TrainOptions()
        size = resolution or self.native_size
        unet = self.denoiser
        with self._lock, torch.inference_mode(False):
            self._reconcile()
            if self._adapters:
                self.pipe.disable_lora()
            buckets = self._buckets(examples, size, seed, bucketing)
            try:
                # Inside the try: an adapter half-added by a failure here is removed below.
                # Its initial weights come from ``seed``, not from the global RNG, so one
                # request trains the same LoRA whatever the worker did before; that RNG is
                # the process's, and these are new modules: under the process-wide lock.
                with loading_models(), torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    unet.add_adapter(
                        LoraConfig(
                            r=rank,
                            lora_alpha=rank,
                            init_lora_weights="gaussian",
                            target_modules=list(LORA_TARGETS),
                        ),
                        adapter_name=_FIT_ADAPTER,
                    )
                unet.enable_adapters()
                unet.set_adapter(_FIT_ADAPTER)
                self._freeze()
                named = {n: p for n, p in unet.named_parameters() if f".{_FIT_ADAPTER}." in n}
                for p in named.values():
                    # Trainable weights stay float32 even on a half-precision base.
                    p.data = p.data.float()
                    p.requires_grad_(True)
                plan = _FitPlan(steps, learning_rate, batch_size, seed, rank)
                losses = self._fit(named, buckets, plan, opts, on_step)
                peft_state = get_peft_model_state_dict(unet, adapter_name=_FIT_ADAPTER)
            finally:
                # The fit adapter leaves and the loaded LoRAs stay, as before the training.
                if _FIT_ADAPTER in self._held_adapters():
                    self._delete_adapters([_FIT_ADAPTER])
                self._reconcile()
                self._freeze()
        info = {
            "format": LORA_FILE_FORMAT,
            # kohya's own metadata, which A1111 and LoRA managers show.
            "ss_network_module": "networks.lora_flux" if self.is_flux else "networks.lora",
            "ss_network_dim": str(rank),
            "ss_network_alpha": str(rank),
            "rank": str(rank),
            "steps": str(steps),
            "resolution": str(size),
            "buckets": " ".join(f"{w}x{h}" for w, h in (b.size for b in buckets)),
            "base_model": self.label,
            **(metadata or {}),
        }
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".part")
        if self.is_flux:
            tensors, adapter_meta = flux_lora_file(peft_state, rank)
            info = {**info, **adapter_meta, "format": FLUX_LORA_FILE_FORMAT}
        else:
            tensors = kohya_lora_state(peft_state)
        save_file(tensors, str(tmp), metadata=info)
        tmp.replace(dest)
        return LoraFit(dest, tuple(losses), rank, steps, size)

    def _fit(
        self,
        named: dict[str, torch.nn.Parameter],
        buckets: list[_Bucket],
        plan: _FitPlan,
        opts: TrainOptions,
        on_step: Callable[[int, int, float], None] | None,
    ) -> list[float]:
        unet = self.denoiser
        params = list(named.values())
        sched = self._train_scheduler()
        optimizer = _optimizer(opts.optimizer, params, plan.learning_rate)
        gen = torch.Generator(device="cpu").manual_seed(plan.seed)
        autocast = opts.autocast_dtype is not None and self.device.type == "cuda"
        # A bucket is drawn in proportion to its images: each image is seen equally often.
        weights = torch.tensor([float(len(b.latents)) for b in buckets])
        losses: list[float] = []
        first = 1
        if opts.checkpoint is not None and opts.checkpoint.is_file():
            first, losses = _load_checkpoint(opts.checkpoint, plan, named, optimizer, gen)
            log.warning("training resumes from %s at step %d", opts.checkpoint.name, first)
        if opts.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        try:
            for step in range(first, plan.steps + 1):
                b = buckets[0]
                if len(buckets) > 1:
                    b = buckets[int(torch.multinomial(weights, 1, generator=gen))]
                n = b.latents.shape[0]
                idx = torch.randint(0, n, (min(plan.batch_size, n),), generator=gen).to(self.device)
                batch = b.latents[idx]
                noise = torch.randn(batch.shape, generator=gen).to(self.device, batch.dtype)
                t = self._draw_t(sched, batch.shape[0], gen)
                with torch.autocast(
                    self.device.type, dtype=opts.autocast_dtype or self.dtype, enabled=autocast
                ):
                    pred, target = self._predict(sched, batch, noise, t, b.cond, idx)
                loss = torch.nn.functional.mse_loss(pred.float(), target.float())
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                every = opts.checkpoint_every
                if (
                    opts.checkpoint is not None
                    and every
                    and step % every == 0
                    and step < plan.steps
                ):
                    _save_checkpoint(opts.checkpoint, step, plan, named, optimizer, gen, losses)
                    if opts.on_checkpoint is not None:
                        opts.on_checkpoint(step, self._validation_image(opts))
                if step == plan.steps and opts.on_final is not None:
                    opts.on_final(step, self._validation_image(opts))
                if on_step is not None:
                    on_step(step, plan.steps, losses[-1])
        finally:
            unet.eval()
            if opts.gradient_checkpointing:
                unet.disable_gradient_checkpointing()
        return losses

    @torch.no_grad()
    def _validation_image(self, opts: TrainOptions) -> np.ndarray | None:
        """The validation prompt drawn with the LoRA as trained so far (its adapter active)."""
        if not opts.validation_prompt:
            return None
        self.denoiser.eval()
        try:
            extra: dict[str, Any] = {}
            if self.is_flux:
                extra = {"max_sequence_length": flux.max_sequence_length(self.pipe)}
            out = self.pipe(
                prompt=opts.validation_prompt,
                num_inference_steps=opts.validation_steps,
                guidance_scale=opts.validation_guidance,
                width=self.native_size,
                height=self.native_size,
                # One fixed seed: the images of successive checkpoints compare.
                generator=torch.Generator(device="cpu").manual_seed(0),
                output_type="np",
                **extra,
            )
            image: np.ndarray = np.asarray(out.images[0], dtype=np.float32)
        finally:
            self.denoiser.train()
        return image


@dataclass(frozen=True)
class TrainOptions:
    """How a training runs, beyond what it learns (see ``[engine.image.training]``)."""

    # bf16/fp16 autocast of the forward pass on CUDA; None: the model's own dtype.
    autocast_dtype: torch.dtype | None = None
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"  # or "adamw8bit" (bitsandbytes)
    # A resumable checkpoint written every ``checkpoint_every`` steps (and read on start).
    checkpoint: Path | None = None
    checkpoint_every: int = 0
    validation_prompt: str | None = None
    validation_steps: int = 20
    validation_guidance: float = 7.0
    # Called after each checkpoint with its step and the validation image (or None).
    on_checkpoint: Callable[[int, np.ndarray | None], None] | None = None
    # Called after the last step with it and the validation image of the trained LoRA (or
    # None): a finished training shows what it ended with, not its last checkpoint's.
    on_final: Callable[[int, np.ndarray | None], None] | None = None


@dataclass(frozen=True)
class _FitPlan:
    steps: int
    learning_rate: float
    batch_size: int
    seed: int
    rank: int

    def fingerprint(self) -> dict[str, float | int]:
        return {
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "rank": self.rank,
        }


def _optimizer(name: str, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found,import-untyped,unused-ignore]
        except ImportError as exc:
            raise ModelError(
                "image.training.optimizer = 'adamw8bit' needs bitsandbytes "
                "(pip install bitsandbytes, in the ml extra); use 'adamw' otherwise"
            ) from exc
        opt: torch.optim.Optimizer = bnb.optim.AdamW8bit(params, lr=lr, weight_decay=1e-2)
        return opt
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)


def _save_checkpoint(
    path: Path,
    step: int,
    plan: _FitPlan,
    named: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    gen: torch.Generator,
    losses: list[float],
) -> None:
    """The LoRA so far, the optimizer's moments and the data order's RNG: enough for the
    next steps to be the ones an uncut training would have taken."""
    state = {
        "step": step,
        "plan": plan.fingerprint(),
        "adapter": {n: p.detach().cpu().clone() for n, p in named.items()},
        "optimizer": optimizer.state_dict(),
        "generator": gen.get_state(),
        "losses": list(losses),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    torch.save(state, tmp)
    tmp.replace(path)


def _load_checkpoint(
    path: Path,
    plan: _FitPlan,
    named: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    gen: torch.Generator,
) -> tuple[int, list[float]]:
    """Restore a checkpoint; the first step still to take and the losses so far. One made
    for other settings (or unreadable) is ignored: training starts over."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["plan"] != plan.fingerprint() or set(state["adapter"]) != set(named):
            raise ValueError("made for other training settings")
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(state["adapter"][n].to(p.device, p.dtype))
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
    except Exception as exc:
        log.warning("checkpoint %s not used (%s): training starts over", path.name, exc)
        return 1, []
    return int(state["step"]) + 1, [float(x) for x in state["losses"]]


def _cover_crop(image: Image.Image, width: int, height: int) -> tuple[Image.Image, int, int]:
    """Resize to cover ``width`` x ``height`` and center-crop the excess; the crop's top, left
    (in the resized image's coordinates).

    The crop is taken from the source before resizing (``resize``'s ``box``), so that only
    ``width`` x ``height`` pixels are ever produced: a long, thin image is not upscaled whole
    before most of it is cut away.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    scale = max(width / w, height / h)
    full_w, full_h = max(width, round(w * scale)), max(height, round(h * scale))
    left = (full_w - width) // 2
    top = (full_h - height) // 2
    box = (left / scale, top / scale, (left + width) / scale, (top + height) / scale)
    box = (max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3]))
    return image.resize((width, height), Image.Resampling.BICUBIC, box=box), top, left


def _to_tensor(image: Image.Image) -> torch.Tensor:
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def to_image_bytes(pixels: np.ndarray, fmt: str) -> bytes:
    """Encode float pixels in [0, 1] as PNG or WebP (lossless)."""
    import io

    img = Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))
    buf = io.BytesIO()
    if fmt == "webp":
        img.save(buf, format="WEBP", lossless=True)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()
