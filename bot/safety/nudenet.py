"""NudeNet's detector as an :class:`~bot.safety.classifier.ImageClassifier`.

The model is the ``320n.onnx`` file the ``nudenet`` wheel ships (no download at any
time); it is run here with onnxruntime, preprocessed with Pillow and numpy the way
``nudenet.NudeDetector`` does with OpenCV (pad to a square at the bottom and right,
linear resize to 320, BGR scaled to 0..1), without importing nudenet's own code (nor
OpenCV).

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


def _resize_linear(array: np.ndarray[Any, Any], side: int) -> np.ndarray[Any, Any]:
    """``array`` (H, W, 3) resized to ``side`` squared the way OpenCV's ``INTER_LINEAR``
    does (the detector's own preprocessing): pixel centres mapped, four neighbours
    blended, no antialiasing (Pillow's bilinear filter widens on a downscale, which moves
    the detector's scores)."""
    import numpy as np

    def axis(size: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        centres = (np.arange(side, dtype=np.float64) + 0.5) * (size / side) - 0.5
        centres = np.clip(centres, 0, size - 1)
        low = np.floor(centres).astype(np.int64)
        high = np.minimum(low + 1, size - 1)
        return low, high, (centres - low).astype(np.float32)

    y0, y1, fy = axis(array.shape[0])
    x0, x1, fx = axis(array.shape[1])
    rows = array[y0] * (1 - fy)[:, None, None] + array[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def _tensor(data: bytes) -> np.ndarray[Any, Any]:
    """The detector's input (1, 3, 320, 320), float32, from encoded image bytes."""
    import numpy as np

    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"the image is too large to classify ({width}×{height})")
            image = opened.convert("RGB")
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not an image that can be classified: {exc}") from exc
    side = max(image.size)
    # Padded to a square at the bottom and right with black, as the detector expects.
    square = np.zeros((side, side, 3), dtype=np.float32)
    square[: image.height, : image.width] = np.asarray(image, dtype=np.float32)
    small = _resize_linear(square, INPUT_SIDE) / 255.0
    # Channels in B, G, R order: what ``nudenet.NudeDetector`` ends up feeding the model
    # (OpenCV decodes to BGR, then its RGBA2BGR conversion and ``swapRB`` swap twice), so
    # its scores, and the thresholds people use with them, hold here.
    return small[:, :, ::-1].transpose(2, 0, 1)[np.newaxis, ...].astype(np.float32)


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
        """Per class, the highest score of a candidate box the detector assigns to that
        class (a box belongs to its best class, as in ``nudenet.NudeDetector``)."""
        import numpy as np

        session = self._loaded()
        inputs = {session.get_inputs()[0].name: _tensor(data)}
        # (1, 4 + classes, boxes): box centre and size, then one score per class.
        classes = session.run(None, inputs)[0][0][4:]
        best_class = classes.argmax(axis=0)
        best_score = classes.max(axis=0)
        found: dict[str, float] = dict.fromkeys(LABELS, 0.0)
        for index in np.unique(best_class):
            found[LABELS[int(index)]] = float(best_score[best_class == index].max())
        return found

    def classify(self, data: bytes) -> Verdict:
        scores = self.scores(data)
        label = max(sorted(EXPLICIT_LABELS), key=lambda name: scores[name])
        score = scores[label]
        return Verdict(
            explicit=score >= self.threshold, score=score, label=label, classifier=self.name
        )
