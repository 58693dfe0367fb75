"""NudeNet's detector as an :class:`~bot.safety.classifier.ImageClassifier`.

The model is the ``320n.onnx`` file the ``nudenet`` wheel ships (no download at any
time); it is run here with onnxruntime, preprocessed with Pillow and numpy the way
``nudenet.NudeDetector`` does with OpenCV (pad to a square at the bottom and right,
resize to 320, RGB scaled to 0..1), without importing nudenet's own code.

Licence: the wheel's metadata says MIT, but the licence text it ships is AGPL-3.0. This
project is MIT, so NudeNet is an opt-in extra (``pip install 'tada-discord[nsfw-filter]'``)
that an operator installs knowing that; nothing here bundles it.
"""

from __future__ import annotations

import importlib.util
import io
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from bot.safety.classifier import Verdict

if TYPE_CHECKING:
    import numpy as np

# The detector's 18 classes, in the model's output order (nudenet 3.4's labels).
LABELS: tuple[str, ...] = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
# What makes an image explicit: exposed genitals, breasts, buttocks (not faces, feet,
# bellies, a bare male chest or anything covered).
EXPLICIT_LABELS: frozenset[str] = frozenset(
    {
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }
)
_EXPLICIT_INDEXES = tuple(i for i, label in enumerate(LABELS) if label in EXPLICIT_LABELS)
INPUT_SIDE = 320
# Generated images are a few megapixels; anything far larger is refused before decoding.
MAX_PIXELS = 40_000_000
MODEL_FILE = "320n.onnx"


def model_path() -> Path | None:
    """The ONNX file inside the installed ``nudenet`` package, found without importing
    it (its ``__init__`` imports OpenCV); ``None`` when the package is not installed."""
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


def _tensor(data: bytes) -> np.ndarray[Any, Any]:
    """The detector's input (1, 3, 320, 320), float32, from encoded image bytes."""
    import numpy as np

    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"the image is too large to classify ({width}×{height})")
            opened.draft("RGB", (INPUT_SIDE, INPUT_SIDE))  # JPEG: decode at a smaller scale
            image = opened.convert("RGB")
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not an image that can be classified: {exc}") from exc
    side = max(image.size)
    square = Image.new("RGB", (side, side))
    square.paste(image, (0, 0))
    small = square.resize((INPUT_SIDE, INPUT_SIDE), Image.Resampling.BILINEAR)
    array = np.asarray(small, dtype=np.float32) / 255.0
    return array.transpose(2, 0, 1)[np.newaxis, ...].copy()


class NudeNetClassifier:
    """NudeNet's 320 px detector: an image is explicit when any detection of an
    :data:`EXPLICIT_LABELS` class scores at least ``threshold``.

    The session is loaded on first use (in the calling thread) and shared by threads
    (onnxruntime's ``run`` is thread-safe).
    """

    name = "nudenet"

    def __init__(self, *, threshold: float = 0.5, path: Path | None = None) -> None:
        found = path or model_path()
        if found is None:
            raise RuntimeError(
                "the nudenet package is not installed: pip install 'tada-discord[nsfw-filter]'"
            )
        self.path = found
        self.threshold = threshold
        self._session: Any = None
        self._lock = threading.Lock()

    def _loaded(self) -> Any:
        with self._lock:
            if self._session is None:
                import onnxruntime

                options = onnxruntime.SessionOptions()
                # A bot shares its CPU with everything else: two threads are plenty at 320 px.
                options.intra_op_num_threads = 2
                self._session = onnxruntime.InferenceSession(
                    str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
                )
            return self._session

    def scores(self, data: bytes) -> dict[str, float]:
        """The highest score of each class over the detector's candidate boxes."""
        session = self._loaded()
        inputs = {session.get_inputs()[0].name: _tensor(data)}
        # (1, 4 + classes, boxes): box centre and size, then one score per class.
        output = session.run(None, inputs)[0][0]
        best = output[4:].max(axis=1)
        return {label: float(best[i]) for i, label in enumerate(LABELS)}

    def classify(self, data: bytes) -> Verdict:
        scores = self.scores(data)
        label = max(EXPLICIT_LABELS, key=lambda name: scores[name])
        score = scores[label]
        return Verdict(
            explicit=score >= self.threshold, score=score, label=label, classifier=self.name
        )
