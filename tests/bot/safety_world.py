"""A scripted image classifier: the deterministic "explicit" verdict the safety tests need,
without explicit images, injected through the composition root."""

from __future__ import annotations

import io

from PIL import Image

from bot.safety import Verdict


class ScriptedClassifier:
    """Judges every image it is given as ``explicit`` says (and checks it is an image)."""

    name = "scripted"

    def __init__(self) -> None:
        self.explicit = True
        self.seen = 0

    def classify(self, data: bytes) -> Verdict:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        self.seen += 1
        score = 0.97 if self.explicit else 0.02
        return Verdict(
            explicit=self.explicit, score=score, label="BUTTOCKS_EXPOSED", classifier=self.name
        )
