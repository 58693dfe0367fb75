"""Job handlers of the image back end: LoRA training and image generation.

Both run in the job worker (blocking torch code). One :class:`ImageBackend` per worker
loads the base model on its first job and keeps it; LoRAs are swapped in as adapters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from sqlalchemy import select, update

from engine.image.enhancer import EnhancedPrompt, EnhancerSource, PromptEnhancer, build_enhancer
from engine.image.models import LoraGenerationRow, LoraTrainingRow
from engine.image.settings import ARCH_DEFAULTS, ImageSettings, image_settings
from engine.image.types import ModelError
from engine.image.untrusted import ImageRefused
from engine.image.zipcheck import KeptReport, load_examples
from engine.jobs import Handler, JobContext, JobFailed
from engine.models import Upload
from engine.settings import EngineSettings
from engine.storage import NotStored, TooLarge

if TYPE_CHECKING:  # torch loads in the worker on the first job, not in API processes
    from engine.image.pipeline import ImageModel

log = logging.getLogger(__name__)

TRAIN_KIND = "image.train_lora"
GENERATE_KIND = "image.generate"
# How often a training checks for cancellation (a DB read), in seconds.
_CANCEL_CHECK_SECONDS = 2.0


def lora_key(training_id: str) -> str:
    """Storage key of a training's safetensors file."""
    return f"loras/{training_id}.safetensors"


def checkpoint_key(training_id: str) -> str:
    """Storage key of a training's resumable checkpoint (gone once the LoRA is saved)."""
    return f"loras/{training_id}.checkpoint.pt"


def validation_key(training_id: str) -> str:
    """Storage key of the validation image of a training's latest checkpoint."""
    return f"loras/{training_id}.validation.png"


class ImageBackend:
    """The worker side of images: the loaded model, the enhancer, and the two handlers."""

    def __init__(
        self,
        settings: ImageSettings,
        *,
        enhancer: PromptEnhancer | None = None,
        on_model_loaded: Callable[[str, float], None] | None = None,
    ) -> None:
        self.settings = settings
        # Told ("image", seconds) after the base model loads (the engine's metrics).
        self._on_model_loaded = on_model_loaded
        self.enhancer = enhancer or build_enhancer(settings.enhancer)
        self._model: ImageModel | None = None
        self._model_lock = threading.Lock()

    def model(self) -> ImageModel:
        """The base model, loaded on first use and kept."""
        with self._model_lock:
            if self._model is None:
                from engine.image.pipeline import ImageModel

                started = time.monotonic()
                self._model = ImageModel.from_settings(self.settings)
                seconds = time.monotonic() - started
                log.info(
                    "image model %s loaded in %.1fs on %s",
                    self._model.label,
                    seconds,
                    self._model.device,
                )
                if self._on_model_loaded is not None:
                    self._on_model_loaded("image", seconds)
            return self._model

    def handlers(self) -> dict[str, Handler]:
        """Job kind -> handler."""
        return {TRAIN_KIND: self.train, GENERATE_KIND: self.generate}

    def train(self, ctx: JobContext) -> dict[str, Any]:
        """Train the LoRA of ``payload.training_id`` on its upload's zip, reading the images
        its kept inspection report lists (the zip is not inspected again)."""
        training_id = str(ctx.payload["training_id"])
        upload_id = str(ctx.payload["upload_id"])
        trigger = str(ctx.payload["trigger_word"])
        cap = ctx.settings.uploads.max_zip_bytes
        with ctx.sessions() as s:
            kept = KeptReport.from_json(
                s.scalar(select(Upload.inspection).where(Upload.id == upload_id))
            )
        try:
            # On object storage a downloaded copy, deleted when the block ends.
            with ctx.storage.local_upload(upload_id, cap) as upload_path:
                if kept is None or not kept.describes(upload_path):
                    raise JobFailed(
                        "the uploaded zip changed after its check; start the training again"
                    )
                report = kept.report
                if not report.ok:
                    raise JobFailed(report.summary())
                ctx.report(1)
                model = self.model()
                cfg = self.settings.training
                # Decoded at the training size: a set of large photos costs what training needs.
                examples = load_examples(
                    upload_path,
                    report,
                    trigger,
                    short_side=cfg.resolution or model.native_size,
                    limits=self.settings.zip,
                )
        except NotStored as exc:
            raise JobFailed("the uploaded zip is gone; upload it again") from exc
        except TooLarge as exc:
            raise JobFailed(f"the uploaded zip is larger than the {cap // 2**20} MB limit") from exc
        except ImageRefused as exc:
            raise JobFailed(str(exc)) from exc
        ctx.report(3)
        last_check = time.monotonic()

        def on_step(step: int, steps: int, loss: float) -> None:
            nonlocal last_check
            if step % cfg.report_every == 0 or step == steps:
                ctx.report(3 + int(95 * step / steps))
            if time.monotonic() - last_check >= _CANCEL_CHECK_SECONDS:
                last_check = time.monotonic()
                ctx.check_canceled()

        key = lora_key(training_id)
        plan = cfg.for_arch(model.defaults_key)
        checkpoint = self._restored_checkpoint(ctx, training_id)
        try:
            # On object storage the file is uploaded when training ends without error.
            with ctx.storage.artifact_file(key) as dest:
                fit = model.train_lora(
                    examples,
                    dest,
                    rank=plan.rank,
                    steps=plan.steps,
                    learning_rate=plan.learning_rate,
                    resolution=cfg.resolution,
                    batch_size=cfg.batch_size,
                    seed=cfg.seed,
                    bucketing=cfg.bucketing,
                    metadata={"trigger_word": trigger, "training_id": training_id},
                    on_step=on_step,
                    options=self._train_options(ctx, model, training_id, trigger, checkpoint),
                )
        except ModelError as exc:
            raise JobFailed(str(exc)) from exc
        checkpoint.unlink(missing_ok=True)
        ctx.storage.delete_artifact(checkpoint_key(training_id))
        with ctx.sessions.begin() as s:
            s.execute(
                update(LoraTrainingRow)
                .where(LoraTrainingRow.id == training_id)
                .values(lora_key=key)
            )
        tail = fit.losses[-min(10, len(fit.losses)) :]
        return {
            "lora_key": key,
            "images": len(examples),
            "ignored": list(report.ignored),
            "steps": fit.steps,
            "rank": fit.rank,
            "resolution": fit.resolution,
            "first_loss": fit.losses[0],
            "final_loss": sum(tail) / len(tail),
            "model": model.label,
        }

    @staticmethod
    def _restored_checkpoint(ctx: JobContext, training_id: str) -> Path:
        """The worker-local checkpoint file of a training, holding the copy kept in storage
        when there is one: a training retried on another worker (or after a restart with
        object storage) resumes from its last checkpoint, not from step 0."""
        local = ctx.settings.data_dir / "checkpoints" / f"{training_id}.pt"
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            with ctx.storage.local_artifact(checkpoint_key(training_id)) as stored:
                if stored.resolve() != local.resolve():
                    shutil.copyfile(stored, local)
        except NotStored:
            local.unlink(missing_ok=True)  # no checkpoint kept: nothing stale either
        return local

    def _train_options(
        self, ctx: JobContext, model: ImageModel, training_id: str, trigger: str, checkpoint: Any
    ) -> Any:
        """Precision, memory, checkpoints and the validation image, from config."""
        import torch

        from engine.image.pipeline import TrainOptions, to_image_bytes

        cfg = self.settings.training
        arch = ARCH_DEFAULTS[model.defaults_key]
        autocast = None
        if cfg.mixed_precision == "bf16" or (
            cfg.mixed_precision == "auto" and model.dtype != torch.float32
        ):
            autocast = torch.bfloat16  # bf16 only: fp16 autocast overflows SDXL and FLUX

        def on_checkpoint(step: int, pixels: Any) -> None:
            # The checkpoint file the pipeline just wrote goes to storage, where a retry on
            # any worker finds it.
            with ctx.storage.artifact_file(checkpoint_key(training_id)) as dest:
                shutil.copyfile(checkpoint, dest)
            on_validation(step, pixels)

        def on_validation(step: int, pixels: Any) -> None:
            if pixels is None:
                return
            vkey = validation_key(training_id)
            ctx.storage.write_artifact(vkey, to_image_bytes(pixels, "png"))
            with ctx.sessions.begin() as s:
                s.execute(
                    update(LoraTrainingRow)
                    .where(LoraTrainingRow.id == training_id)
                    .values(validation_key=vkey, validation_step=step)
                )

        prompt = cfg.validation_prompt
        return TrainOptions(
            autocast_dtype=autocast,
            gradient_checkpointing=cfg.gradient_checkpointing,
            optimizer=cfg.optimizer,
            checkpoint=checkpoint if cfg.checkpoint_every else None,
            checkpoint_every=cfg.checkpoint_every,
            validation_prompt=prompt.replace("{trigger}", trigger) if prompt else None,
            validation_steps=cfg.validation_steps or arch.generation_steps,
            validation_guidance=arch.guidance_scale,
            on_checkpoint=on_checkpoint,
            # The trained LoRA's own image at the end (the bot shows it as the last one).
            on_final=on_validation if prompt else None,
        )

    def generate(self, ctx: JobContext) -> dict[str, Any]:
        """Enhance the prompt, draw one image, store it and record the generation."""
        p = ctx.payload
        gen_cfg = self.settings.generation
        demo = p.get("demo")
        if demo is not None:
            demo_cfg = self.settings.demos.get(str(demo))
            if demo_cfg is None:
                raise JobFailed(f"demo {demo!r} is not configured on this worker")
            if not demo_cfg.lora_path.is_file():
                raise JobFailed(f"the LoRA file {demo_cfg.lora_path.name} is missing")
            lora_name = demo_cfg.lora_path.name
            lora_file: AbstractContextManager[Path] = contextlib.nullcontext(demo_cfg.lora_path)
            trigger: str | None = demo_cfg.trigger_word
            weight = demo_cfg.weight
        else:
            lora_name = Path(str(p["lora_key"])).name
            # On object storage a worker-local copy, refreshed when the LoRA changes.
            lora_file = ctx.storage.local_artifact(str(p["lora_key"]))
            trigger = p.get("trigger_word")
            weight = gen_cfg.lora_weight
        seed = int(p["seed"])
        if "enhanced_prompt" in p:  # a variation: its parent's prompt as the model got it
            enhanced = EnhancedPrompt(
                str(p["enhanced_prompt"]),
                str(p["full_negative_prompt"]),
                EnhancerSource(str(p["enhancer"])),
            )
        else:
            enhanced = self.enhancer.enhance(str(p["prompt"]), trigger, seed)
            if p.get("negative_prompt"):
                negative = f"{p['negative_prompt']}, {enhanced.negative_prompt}"
                enhanced = dataclasses.replace(enhanced, negative_prompt=negative)
        model = self.model()
        arch = ARCH_DEFAULTS[model.defaults_key]
        width, height = gen_cfg.width, gen_cfg.height
        if "width" in p and "height" in p:
            width, height = int(p["width"]), int(p["height"])
        elif p.get("aspect_ratio"):
            width, height = model.aspect_size(str(p["aspect_ratio"]), width, height)
        # An upscale or a variation: img2img from the parent image, stored by this engine.
        source = self._source_image(ctx, str(p["source_key"])) if "source_key" in p else None
        drawing: dict[str, Any] = {
            "negative_prompt": enhanced.negative_prompt,
            "weight": weight,
            "seed": seed,
            "steps": gen_cfg.steps or arch.generation_steps,
            "guidance_scale": (
                arch.guidance_scale if gen_cfg.guidance_scale is None else gen_cfg.guidance_scale
            ),
            "width": width,
            "height": height,
        }
        try:
            with lora_file as lora_path:
                if source is None:
                    pixels = model.generate(enhanced.prompt, lora=lora_path, **drawing)
                else:
                    pixels = model.refine(
                        source,
                        enhanced.prompt,
                        strength=float(p["strength"]),
                        lora=lora_path,
                        **drawing,
                    )
        except NotStored as exc:
            raise JobFailed(f"the LoRA file {lora_name} is missing") from exc
        except ModelError as exc:
            raise JobFailed(str(exc)) from exc
        from engine.image.pipeline import to_image_bytes

        fmt = gen_cfg.output_format
        generation_id = str(p["generation_id"])
        image_key = f"images/{generation_id}.{fmt}"
        ctx.storage.write_artifact(image_key, to_image_bytes(pixels, fmt))
        height, width = int(pixels.shape[0]), int(pixels.shape[1])
        with ctx.sessions.begin() as s:
            if s.get(LoraGenerationRow, generation_id) is None:  # a retried job wrote it already
                s.add(
                    LoraGenerationRow(
                        id=generation_id,
                        user_id=ctx.user_id,
                        training_id=p.get("training_id"),
                        upload_id=p.get("upload_id"),
                        demo=demo,
                        prompt=str(p["prompt"]),
                        enhanced_prompt=enhanced.prompt,
                        negative_prompt=enhanced.negative_prompt,
                        enhancer=enhanced.source.value,
                        seed=seed,
                        width=width,
                        height=height,
                        model=model.label,
                        image_key=image_key,
                        variation_of=p.get("variation_of"),
                        parent_id=p.get("parent_id"),
                        operation=p.get("operation"),
                    )
                )
        return {"generation_id": generation_id, "image_key": image_key}

    @staticmethod
    def _source_image(ctx: JobContext, key: str) -> Image.Image:
        """The stored image an upscale or a variation starts from, decoded (an image this
        engine wrote, of a size it drew)."""
        try:
            with ctx.storage.local_artifact(key) as path, Image.open(path) as image:
                return image.convert("RGB")
        except NotStored as exc:
            raise JobFailed("the image to upscale or vary is no longer stored") from exc
        except (OSError, Image.DecompressionBombError) as exc:
            # The reason (with a server path in it) goes to the log, not to the caller.
            log.warning("stored image %s cannot be read: %s", key, exc)
            raise JobFailed("the stored image cannot be read; draw a new one") from exc


def image_handlers(
    settings: EngineSettings, *, on_model_loaded: Callable[[str, float], None] | None = None
) -> dict[str, Handler]:
    """The image job handlers for ``default_handlers`` (the model loads on first job;
    ``on_model_loaded`` is told how long it took)."""
    return ImageBackend(image_settings(settings.image), on_model_loaded=on_model_loaded).handlers()
