"""The image safety check the job runner makes before posting any generated image."""

from __future__ import annotations

import asyncio
import logging
import time

from bot.config import SafetyConfig
from bot.policy.settings import ExplicitImages
from bot.safety.classifier import ImageClassifier, Verdict

log = logging.getLogger(__name__)

# What the member is told, privately, instead of the image.
WITHHELD_BLOCKED = (
    "🔞 Your image was judged explicit, and this server does not allow explicit images: "
    "it was not posted, and it does not count against your quota."
)
WITHHELD_CHANNEL = (
    "🔞 Your image was judged explicit: it was not posted, because this channel is not "
    "age-restricted. It does not count against your quota; try it in an age-restricted "
    "channel."
)
WITHHELD_UNREADABLE = (
    "🔞 Your image could not be checked for explicit content, so it was not posted. "
    "It does not count against your quota."
)


def build_classifier(config: SafetyConfig) -> ImageClassifier | None:
    """The classifier ``[safety]`` names (``None``: images are posted unclassified)."""
    if config.classifier == "none":
        return None
    from bot.safety.nudenet import NudeNetClassifier, model_path

    if model_path() is None:
        if config.classifier == "nudenet":
            raise RuntimeError(
                "safety.classifier = 'nudenet' but the nudenet package is not installed: "
                "pip install 'tada-discord[nsfw-filter]' (AGPL-3.0), or choose 'none'"
            )
        log.warning(
            "no image safety classifier: generated images are posted unchecked. Install "
            "the nsfw-filter extra (nudenet, AGPL-3.0) or set [safety] classifier = 'none' "
            "to say so on purpose"
        )
        return None
    log.info("image safety: NudeNet (AGPL-3.0, opt-in), threshold %.2f", config.threshold)
    return NudeNetClassifier(threshold=config.threshold)


def may_post(verdict: Verdict, setting: ExplicitImages, *, age_restricted: bool) -> str | None:
    """``None`` when the image may be posted here, else the member's private note."""
    if not verdict.explicit:
        return None
    if verdict.label == "unreadable":
        return WITHHELD_UNREADABLE
    if setting is ExplicitImages.AGE_RESTRICTED:
        return None if age_restricted else WITHHELD_CHANNEL
    return WITHHELD_BLOCKED


class ImageSafety:
    """Classifies generated images off the event loop (``classifier`` ``None``: nothing is
    checked, and every verdict says so)."""

    def __init__(self, classifier: ImageClassifier | None) -> None:
        self.classifier = classifier

    @property
    def name(self) -> str:
        """The classifier's name, or "none"."""
        return self.classifier.name if self.classifier is not None else "none"

    async def classify(self, data: bytes, *, what: str) -> Verdict:
        """The verdict on ``data``; an image the classifier cannot read counts as explicit
        (fail closed: it is withheld where explicit images are)."""
        classifier = self.classifier
        if classifier is None:
            return Verdict(explicit=False, score=0.0, label=None, classifier="none")
        started = time.perf_counter()
        try:
            verdict = await asyncio.to_thread(classifier.classify, data)
        except ValueError as exc:
            log.warning("%s: the image could not be classified (%s); withheld", what, exc)
            return Verdict(explicit=True, score=1.0, label="unreadable", classifier=classifier.name)
        except Exception:
            # A classifier failure must not post the image unchecked, nor stop the delivery.
            log.exception("%s: the classifier failed; the image is withheld", what)
            return Verdict(explicit=True, score=1.0, label="unreadable", classifier=classifier.name)
        log.info(
            "%s: %s scored %.3f (%s) in %.2f s%s",
            what,
            verdict.classifier,
            verdict.score,
            verdict.label,
            time.perf_counter() - started,
            ": explicit" if verdict.explicit else "",
        )
        return verdict
