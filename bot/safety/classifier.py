"""What an image classifier answers, and the protocol every classifier implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Verdict:
    """One image's classification.

    ``score`` is the classifier's confidence that the image is explicit (0 to 1), ``label``
    what it saw (a class name, for the log); ``explicit`` is ``score`` against the
    configured threshold. ``classifier`` names who judged ("none": nobody did).
    """

    explicit: bool
    score: float
    label: str | None
    classifier: str


class ImageClassifier(Protocol):
    """Judges one encoded image (PNG, JPEG, WebP). Blocking: callers run it in a thread.

    Raises :class:`ValueError` for bytes that are not an image it can read.
    """

    @property
    def name(self) -> str:
        """A short name for logs and ``/tada-admin show`` ("nudenet")."""
        ...

    def classify(self, data: bytes) -> Verdict: ...
