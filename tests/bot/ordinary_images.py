"""Ordinary images (no nudity) for measuring the safety classifier's false positives.

Three kinds, all made or found on this machine (nothing downloaded):

- photos: every colour or grey photo scikit-image ships in its wheel (an astronaut's
  portrait, a cat, coffee, a rocket, motorcycles, a horse, textures...) and the two
  scikit-learn ships (a temple in China, a flower);
- drawings made here with Pillow: landscapes, portraits (faces and bare shoulders in a
  range of skin tones, the classifier's hardest ordinary case), abstract shapes;
- images drawn by the engine's tiny random-weight model (what the tests' generations are).
"""

from __future__ import annotations

import importlib.util
import io
import random
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageDraw

SKIN_TONES = (
    (255, 224, 196),
    (241, 194, 160),
    (224, 172, 105),
    (198, 134, 66),
    (141, 85, 36),
    (92, 56, 30),
)
# Files of scikit-image's data folder that are not photos or not of a usable size.
_NOT_PHOTOS = {"chessboard_GRAY.png", "chessboard_RGB.png", "phantom.png", "microaneurysms.png"}


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def photos() -> Iterator[tuple[str, bytes]]:
    """The photos scikit-image and scikit-learn ship (none when they are not installed)."""
    skimage = _package_dir("skimage")
    if skimage is not None:
        for path in sorted((skimage / "data").iterdir()):
            if path.suffix in {".png", ".jpg"} and path.name not in _NOT_PHOTOS:
                yield f"photo:{path.stem}", path.read_bytes()
    sklearn = _package_dir("sklearn")
    if sklearn is not None:
        for path in sorted((sklearn / "datasets" / "images").glob("*.jpg")):
            yield f"photo:{path.stem}", path.read_bytes()


def landscape(seed: int, size: tuple[int, int] = (512, 384)) -> bytes:
    """Sky, sun, mountains, a lake or a field, trees."""
    rng = random.Random(seed)
    w, h = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    top = (rng.randint(40, 120), rng.randint(100, 180), rng.randint(190, 255))
    for y in range(h):
        t = y / h
        draw.line([(0, y), (w, y)], fill=tuple(int(c * (1 - t) + 255 * t * 0.8) for c in top))
    sx, sy, r = rng.randint(40, w - 40), rng.randint(20, h // 3), rng.randint(15, 40)
    draw.ellipse([sx - r, sy - r, sx + r, sy + r], fill=(255, rng.randint(200, 240), 120))
    for layer in range(3):
        base = h // 2 + layer * 30
        points = [(0, h)] + [
            (x, base - rng.randint(0, 120 - layer * 30)) for x in range(0, w + 64, 64)
        ]
        shade = 60 + layer * 40
        draw.polygon([*points, (w, h)], fill=(shade // 2, shade, shade // 2 + rng.randint(0, 40)))
    ground = (rng.randint(30, 90), rng.randint(110, 170), rng.randint(30, 90))
    draw.rectangle([0, int(h * 0.8), w, h], fill=ground)
    for _ in range(rng.randint(3, 9)):
        x, y = rng.randint(0, w), rng.randint(int(h * 0.7), h)
        draw.rectangle([x - 3, y - 25, x + 3, y], fill=(90, 60, 30))
        draw.ellipse([x - 16, y - 60, x + 16, y - 20], fill=(20, rng.randint(90, 140), 40))
    return _png(image)


def portrait(seed: int, size: tuple[int, int] = (384, 512)) -> bytes:
    """A head and bare shoulders (a tank top or none) on a plain background."""
    rng = random.Random(seed)
    w, h = size
    skin = SKIN_TONES[seed % len(SKIN_TONES)]
    bg = tuple(rng.randint(120, 230) for _ in range(3))
    image = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(image)
    cx = w // 2
    # Shoulders and neck, then the head.
    draw.ellipse([cx - 170, int(h * 0.62), cx + 170, int(h * 1.25)], fill=skin)
    draw.rectangle([cx - 35, int(h * 0.42), cx + 35, int(h * 0.68)], fill=skin)
    if seed % 3:
        top = tuple(rng.randint(0, 255) for _ in range(3))
        draw.rectangle([cx - 110, int(h * 0.8), cx + 110, h], fill=top)
    draw.ellipse([cx - 85, int(h * 0.12), cx + 85, int(h * 0.52)], fill=skin)
    hair = tuple(rng.randint(10, 120) for _ in range(3))
    draw.chord([cx - 92, int(h * 0.08), cx + 92, int(h * 0.4)], 180, 360, fill=hair)
    for dx in (-35, 35):
        draw.ellipse([cx + dx - 12, int(h * 0.29), cx + dx + 12, int(h * 0.33)], fill="white")
        draw.ellipse([cx + dx - 5, int(h * 0.295), cx + dx + 5, int(h * 0.325)], fill=(40, 30, 20))
    draw.line([cx, int(h * 0.33), cx - 8, int(h * 0.4)], fill=(90, 50, 40), width=3)
    draw.arc([cx - 30, int(h * 0.38), cx + 30, int(h * 0.46)], 20, 160, fill=(150, 40, 50), width=4)
    return _png(image)


def abstract(seed: int, size: tuple[int, int] = (512, 512)) -> bytes:
    """Overlapping shapes in random colours: what a member's doodle or a logo looks like."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randint(0, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    w, h = size
    for _ in range(rng.randint(8, 25)):
        x0, y0 = rng.randint(0, w), rng.randint(0, h)
        x1, y1 = x0 + rng.randint(10, 200), y0 + rng.randint(10, 200)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        shape = rng.choice(("ellipse", "rectangle", "line"))
        if shape == "ellipse":
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        elif shape == "rectangle":
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            draw.line([x0, y0, x1, y1], fill=colour, width=rng.randint(2, 12))
    return _png(image)


def drawings(count: int = 10) -> Iterator[tuple[str, bytes]]:
    """``count`` each of landscapes, portraits and abstract drawings."""
    for seed in range(count):
        yield f"landscape:{seed}", landscape(seed)
        yield f"portrait:{seed}", portrait(seed)
        yield f"abstract:{seed}", abstract(seed)


def tiny_model_images(count: int = 4) -> Iterator[tuple[str, bytes]]:
    """Images the engine's tiny random-weight SD 1.5 model draws (what tests generate)."""
    import numpy as np

    from engine.image.pipeline import ImageModel
    from engine.image.settings import ImageSettings

    model = ImageModel.from_settings(ImageSettings())
    for seed in range(count):
        pixels = model.generate("a portrait of a woman on a beach", seed=seed, steps=2)
        image = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype("uint8"))
        yield f"tiny-model:{seed}", _png(image)
