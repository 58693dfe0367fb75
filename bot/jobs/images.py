"""The controls members expect of an image command: a seed, an aspect ratio, a negative
prompt, variations of an image, upscale 2x and vary (subtle / strong) of a posted image,
and the seed shown so it can be reused.

They are engine extensions: the hosted Ta-da API takes only ``prompt``. Each travels in the
job's parameters and is sent only when the API's OpenAPI document offers it
(:class:`~bot.tada.offer.GenerationOffer`); what the member asked for and this API lacks is
named in a short private note. A result keeps the seed and size the API answered, and
whether the post may offer "Variations" and "Use seed".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.errors import UserFacingError
from bot.jobs.models import Job, JobKind, JobRequest, JobState
from bot.messages import clip
from bot.names import visible
from bot.tada.models import ImageGeneration
from bot.tada.offer import GenerationOffer

# The ratios the command offers (width:height), those our engine accepts, squarest first.
ASPECT_RATIOS: tuple[str, ...] = ("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16")
MAX_SEED = 2**31 - 1
# Words for the member, per control.
LABELS = {"seed": "seed", "negative_prompt": "negative prompt", "aspect_ratio": "aspect ratio"}
# The image operations of a post's buttons (engine extensions: img2img from the image), by
# the name the engine answers in ``operation``: the strength sent to ``/vary`` (None: an
# upscale), and how the result's post names its parent.
REFINEMENTS: dict[str, tuple[str | None, str]] = {
    "upscale": (None, "Upscaled 2x from"),
    "vary_subtle": ("subtle", "Subtle variation of"),
    "vary_strong": ("strong", "Strong variation of"),
}
# The jobs whose images the post's Upscale and Vary buttons work on.
REFINABLE_KINDS = frozenset({JobKind.LORA_GENERATE, JobKind.DEMO_GENERATE})
NOT_REFINED_HERE = (
    "This server's Ta-da API does not upscale or vary images (the hosted Ta-da API has "
    "neither); use Re-roll or Variations instead."
)


@dataclass(frozen=True, slots=True)
class ImageOptions:
    """The optional controls of one generation (``None``: not asked for)."""

    seed: int | None = None
    negative_prompt: str | None = None
    aspect_ratio: str | None = None

    @classmethod
    def of_params(cls, params: dict[str, Any]) -> ImageOptions:
        """The options kept in a job's parameters."""
        seed = params.get("seed")
        negative = params.get("negative_prompt")
        ratio = params.get("aspect_ratio")
        return cls(
            seed=seed if isinstance(seed, int) else None,
            negative_prompt=negative if isinstance(negative, str) and negative else None,
            aspect_ratio=ratio if isinstance(ratio, str) and ratio else None,
        )

    def params(self) -> dict[str, Any]:
        """The options asked for, as job parameters."""
        values = {
            "seed": self.seed,
            "negative_prompt": self.negative_prompt,
            "aspect_ratio": self.aspect_ratio,
        }
        return {k: v for k, v in values.items() if v is not None}

    def missing_from(self, offer: GenerationOffer) -> list[str]:
        """The names (for the member) of the options asked for that ``offer`` lacks."""
        offered = {
            "seed": offer.seed,
            "negative_prompt": offer.negative_prompt,
            "aspect_ratio": self.aspect_ratio is not None
            and offer.accepts_ratio(self.aspect_ratio),
        }
        return [LABELS[k] for k in self.params() if not offered[k]]

    def within(self, offer: GenerationOffer) -> ImageOptions:
        """Only the options ``offer`` accepts."""
        ratio = self.aspect_ratio
        return ImageOptions(
            seed=self.seed if offer.seed else None,
            negative_prompt=self.negative_prompt if offer.negative_prompt else None,
            aspect_ratio=ratio if ratio is not None and offer.accepts_ratio(ratio) else None,
        )


def unsupported_note(missing: list[str]) -> str:
    """The private note for options this server's API does not take."""
    names = ", ".join(missing)
    return (
        f"ℹ️ This server's Ta-da API does not support {names}: your image is drawn "
        "without it (the hosted Ta-da API takes only the prompt)."
    )


def generation_body(params: dict[str, Any], offer: GenerationOffer) -> dict[str, Any]:
    """The extension fields of a LoRA generation job that ``offer`` accepts, as keyword
    arguments of :meth:`bot.tada.TadaClient.generate_lora`."""
    body = ImageOptions.of_params(params).within(offer).params()
    parent = params.get("variation_of")
    if parent and offer.variation_of:
        # A variation takes its seed, negative prompt and size from its parent.
        return {"variation_of": str(parent)}
    return body


def image_result(
    image: ImageGeneration, params: dict[str, Any], offer: GenerationOffer | None
) -> dict[str, Any]:
    """A generation job's result: what to post, and which controls the post offers."""
    offer = offer or GenerationOffer()
    return {
        "generation_id": image.id,
        "url": image.image_url,
        "prompt": image.prompt or params.get("prompt"),
        "enhanced_prompt": image.enhanced_prompt,
        "model": image.model,
        "seed": image.seed,
        "width": image.width,
        "height": image.height,
        "variation_of": image.variation_of,
        "parent_id": image.parent_id,
        "operation": image.operation,
        # Whether the seed can be sent back to this API, and whether it makes variations.
        "seed_reusable": offer.seed,
        "can_vary": offer.variation_of and image.id is not None,
        # Whether this API upscales and varies the image (the Upscale / Vary buttons).
        "can_upscale": offer.upscale and image.id is not None,
        "can_vary_image": offer.vary_image and image.id is not None,
    }


def _finished_image(job: Job) -> dict[str, Any]:
    result = job.result or {}
    if job.kind is not JobKind.LORA_GENERATE or job.state is not JobState.FINISHED:
        raise UserFacingError("Only a finished image from a LoRA can be varied from here.")
    if not result.get("generation_id"):
        raise UserFacingError("Ta-da gave this image no id, so it cannot be varied.")
    return result


def variation_request(job: Job, parent_url: str | None) -> JobRequest:
    """A variation of the image ``job`` made: the same LoRA and prompt, a new seed, linked
    to the message it was posted in (``parent_url``)."""
    result = _finished_image(job)
    p = job.params
    prompt = str(result.get("prompt") or p["prompt"])
    params: dict[str, Any] = {
        "lora_id": p["lora_id"],
        "lora_name": p.get("lora_name"),
        # The engine wants the parent's prompt as the member wrote it, and nothing else.
        "prompt": prompt,
        "variation_of": str(result["generation_id"]),
        "parent_job": job.id,
        # Shown on the post (the variation keeps them); sent only if variations go away.
        **{k: p[k] for k in ("negative_prompt", "aspect_ratio") if p.get(k)},
    }
    if parent_url:
        params["parent_url"] = parent_url
    return JobRequest(JobKind.LORA_GENERATE, params, text=prompt)


def refine_request(job: Job, operation: str, parent_url: str | None) -> JobRequest:
    """Upscale or vary (``operation``, a :data:`REFINEMENTS` key) the image ``job`` made: an
    image job of the same kind as its parent (the same gate, quota and queue), of the same
    LoRA or demo and prompt, linked to the message it was posted in (``parent_url``)."""
    if operation not in REFINEMENTS:
        raise ValueError(f"unknown image operation {operation!r}")
    result = job.result or {}
    if job.kind not in REFINABLE_KINDS or job.state is not JobState.FINISHED:
        raise UserFacingError("Only a finished image can be upscaled or varied from here.")
    if not result.get("generation_id"):
        raise UserFacingError("Ta-da gave this image no id, so it cannot be upscaled or varied.")
    p = job.params
    prompt = str(result.get("prompt") or p["prompt"])
    origin = (
        {"lora_id": p["lora_id"], "lora_name": p.get("lora_name")}
        if job.kind is JobKind.LORA_GENERATE
        else {"model": p.get("model")}
    )
    params: dict[str, Any] = {
        **origin,
        "prompt": prompt,
        "refine": {"image_id": str(result["generation_id"]), "operation": operation},
        "parent_job": job.id,
        # Shown on the post: the result keeps its parent's.
        **{k: p[k] for k in ("negative_prompt",) if p.get(k)},
    }
    if parent_url:
        params["parent_url"] = parent_url
    return JobRequest(job.kind, params, text=prompt)


def image_operations(offer: GenerationOffer) -> GenerationOffer:
    """Of ``offer``, only the image operations (a demo takes no generation controls, but
    its image may be upscaled and varied)."""
    return GenerationOffer(upscale=offer.upscale, vary_image=offer.vary_image)


def refinement_of(params: dict[str, Any]) -> tuple[str, str] | None:
    """The image id and operation of an upscale or vary job (``None``: a plain image)."""
    refine = params.get("refine")
    if not isinstance(refine, dict):
        return None
    return str(refine["image_id"]), str(refine["operation"])


def refine_call(params: dict[str, Any], offer: GenerationOffer) -> tuple[str, str | None]:
    """What to ask the API for an upscale or vary job: the image id, and the strength of a
    variation (``None``: an upscale); a clear refusal where this API has neither."""
    found = refinement_of(params)
    assert found is not None
    image_id, operation = found
    strength, _ = REFINEMENTS[operation]
    if not (offer.upscale if strength is None else offer.vary_image):
        raise UserFacingError(NOT_REFINED_HERE)
    return image_id, strength


def parent_lead(params: dict[str, Any]) -> str:
    """How a post names the message of the image it came from ("" when none)."""
    parent = params.get("parent_url")
    if not isinstance(parent, str) or not parent:
        return ""
    found = refinement_of(params)
    what = REFINEMENTS[found[1]][1] if found and found[1] in REFINEMENTS else "Variation of"
    return f" ↪️ {what} {parent}"


def with_new_seed(job: Job, request: JobRequest) -> JobRequest:
    """A re-roll of a finished image draws a new one: its seed is left to the API (the
    same seed, prompt and LoRA would draw the same image again)."""
    if job.kind is not JobKind.LORA_GENERATE or job.state is not JobState.FINISHED:
        return request
    params = {k: v for k, v in request.params.items() if k != "seed"}
    return JobRequest(request.kind, params, text=request.text)


def parse_seed(text: str) -> int | None:
    """A seed typed by the member (blank: none); a clear refusal otherwise."""
    text = text.strip()
    if not text:
        return None
    if not text.isdigit() or int(text) > MAX_SEED:
        raise UserFacingError(f"The seed must be a whole number from 0 to {MAX_SEED}.")
    return int(text)


def parse_ratio(text: str) -> str | None:
    """An aspect ratio typed by the member (blank: the default size)."""
    text = text.strip().replace(" ", "")
    if not text:
        return None
    if text not in ASPECT_RATIOS:
        raise UserFacingError(f"The aspect ratio must be one of {', '.join(ASPECT_RATIOS)}.")
    return text


def _size(result: dict[str, Any], params: dict[str, Any]) -> str | None:
    width, height = result.get("width"), result.get("height")
    if not (isinstance(width, int) and isinstance(height, int)):
        return None
    ratio = params.get("aspect_ratio")
    return f"{width}×{height}" + (f" ({ratio})" if ratio else "")


def image_fields(job: Job) -> list[tuple[str, str]]:
    """The parameters shown under a posted image: seed, size, the member's negative prompt."""
    result = job.result or {}
    fields: list[tuple[str, str]] = []
    if isinstance(result.get("seed"), int):
        fields.append(("Seed", f"`{result['seed']}`"))
    size = _size(result, job.params)
    if size:
        fields.append(("Size", size))
    negative = job.params.get("negative_prompt")
    if isinstance(negative, str) and negative:
        fields.append(("Negative prompt", clip(negative, 300)))
    return fields


def seed_card(job: Job) -> str:
    """The seed and parameters of a posted image, shown privately so they can be reused."""
    result = job.result or {}
    p = job.params
    seed = result.get("seed")
    lines = [f"🌱 **Seed `{seed}`**" if isinstance(seed, int) else "🌱 No seed was reported."]
    size = _size(result, p)
    if size:
        lines.append(f"Size: {size}")
    lora = p.get("lora_name") or p.get("lora_id")
    if lora:
        lines.append(f"LoRA: **{clip(visible(str(lora)), 100)}**")
    lines.append(f"Prompt: {clip(str(result.get('prompt') or p.get('prompt', '')), 800)}")
    negative = p.get("negative_prompt")
    if isinstance(negative, str) and negative:
        lines.append(f"Negative prompt: {clip(negative, 300)}")
    if result.get("variation_of"):
        lines.append(f"A variation of generation `{result['variation_of']}`.")
    if result.get("parent_id") and result.get("operation") in REFINEMENTS:
        what = REFINEMENTS[str(result["operation"])][1]
        lines.append(f"{what} generation `{result['parent_id']}`.")
    if isinstance(seed, int) and result.get("seed_reusable"):
        ratio = p.get("aspect_ratio")
        options = f"`seed:{seed}`" + (f" `aspect_ratio:{ratio}`" if ratio else "")
        lines.append(
            f"Reuse it: `/lora generate` with {options}, or (if it is your image) "
            "**Draw with this seed** to change the prompt and keep the seed."
        )
    elif isinstance(seed, int):
        lines.append("This server's Ta-da API does not take a seed, so it cannot be reused here.")
    return "\n".join(lines)
