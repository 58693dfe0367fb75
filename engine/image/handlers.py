"""Job handlers of the image back end: LoRA training and image generation.

Both run in the job worker (blocking torch code). One :class:`ImageBackend` per worker
loads the base model on its first job and keeps it; LoRAs are swapped in as adapters.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import update

from engine.image.enhancer import EnhancedPrompt, EnhancerSource, PromptEnhancer, build_enhancer
from engine.image.models import LoraGenerationRow, LoraTrainingRow
from engine.image.settings import ARCH_DEFAULTS, ImageSettings, image_settings
from engine.image.types import ModelError
from engine.image.untrusted import ImageRefused
from engine.image.zipcheck import inspect_zip, load_examples
from engine.jobs import Handler, JobContext, JobFailed
from engine.settings import EngineSettings

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

    def __init__(self, settings: ImageSettings, *, enhancer: PromptEnhancer | None = None) -> None:
        self.settings = settings
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
                log.info(
                    "image model %s loaded in %.1fs on %s",
                    self._model.label,
                    time.monotonic() - started,
                    self._model.device,
                )
            return self._model

    def handlers(self) -> dict[str, Handler]:
        """Job kind -> handler."""
        return {TRAIN_KIND: self.train, GENERATE_KIND: self.generate}

    def train(self, ctx: JobContext) -> dict[str, Any]:
        """Train the LoRA of ``payload.training_id`` on its upload's zip."""
        training_id = str(ctx.payload["training_id"])
        upload_path = ctx.storage.upload_path(str(ctx.payload["upload_id"]))
        trigger = str(ctx.payload["trigger_word"])
        if not upload_path.is_file():
            raise JobFailed("the uploaded zip is gone; upload it again")
        report = inspect_zip(upload_path, self.settings.zip)
        if not report.ok:
            raise JobFailed(report.summary())
        ctx.report(1)
        model = self.model()
        cfg = self.settings.training
        # Decoded at the training size: a set of large photos costs what training needs.
        try:
            examples = load_examples(
                upload_path,
                report,
                trigger,
                short_side=cfg.resolution or model.native_size,
                limits=self.settings.zip,
            )
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
        checkpoint = ctx.storage.artifact_path(checkpoint_key(training_id))
        try:
            fit = model.train_lora(
                examples,
                ctx.storage.artifact_path(key),
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
            lora_path = demo_cfg.lora_path
            trigger: str | None = demo_cfg.trigger_word
            weight = demo_cfg.weight
        else:
            lora_path = ctx.storage.artifact_path(str(p["lora_key"]))
            trigger = p.get("trigger_word")
            weight = gen_cfg.lora_weight
        if not lora_path.is_file():
            raise JobFailed(f"the LoRA file {lora_path.name} is missing")
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
        try:
            pixels = model.generate(
                enhanced.prompt,
                negative_prompt=enhanced.negative_prompt,
                lora=lora_path,
                weight=weight,
                seed=seed,
                steps=gen_cfg.steps or arch.generation_steps,
                guidance_scale=(
                    arch.guidance_scale
                    if gen_cfg.guidance_scale is None
                    else gen_cfg.guidance_scale
                ),
                width=width,
                height=height,
            )
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
                    )
                )
        return {"generation_id": generation_id, "image_key": image_key}


def image_handlers(settings: EngineSettings) -> dict[str, Handler]:
    """The image job handlers for ``default_handlers`` (the model loads on first job)."""
    return ImageBackend(image_settings(settings.image)).handlers()
