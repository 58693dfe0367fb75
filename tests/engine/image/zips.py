"""Real training zips for tests: images drawn with Pillow, written with zipfile."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw


def image_bytes(i: int, size: int = 48, fmt: str = "PNG") -> bytes:
    """A distinct small picture: a coloured disc on a background, varied by ``i``."""
    img = Image.new("RGB", (size, size), (200 - 10 * i % 200, 60, 40 + 20 * i % 200))
    draw = ImageDraw.Draw(img)
    r = size // 3
    c = size // 2 + (i % 3) - 1
    draw.ellipse((c - r, c - r, c + r, c + r), fill=(30, 40 + 15 * i % 200, 220))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def build_zip(entries: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    """A zip of ``entries``; names in ``links`` are stored as symbolic links."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in links:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, data)
    return buf.getvalue()


def good_zip(n: int = 4, size: int = 48, captions: bool = True) -> bytes:
    """``n`` decodable images in three formats, captions for some, plus clutter."""
    formats = ("PNG", "JPEG", "WEBP")
    suffix = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
    entries: dict[str, bytes] = {}
    for i in range(n):
        fmt = formats[i % 3]
        entries[f"set/img{i}.{suffix[fmt]}"] = image_bytes(i, size, fmt)
        if captions and i % 2 == 0:
            entries[f"set/img{i}.txt"] = f"a blue disc number {i}".encode()
    entries["set/notes.md"] = b"# not an image"
    entries["__MACOSX/set/._img0.png"] = b"junk"
    return build_zip(entries)


def write(tmp: Path, data: bytes, name: str = "set.zip") -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path
