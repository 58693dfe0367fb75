"""Members' images and zips, read with bounded memory whatever they claim to be.

A few kilobytes of PNG can declare 13000x13000 pixels, a JPEG header can claim 60000x60000,
an animation can declare a million frames, and a zip's central directory can hold two
million entries or sizes that lie. Everything here looks at what a file declares first
(image headers, the zip's end record) and refuses what would cost too much before
decoding it; what is decoded is decoded at the size it is needed at (JPEG draft, reduce),
first frame only. The reasons are written for the member.

Pillow and the standard library only: the engine's zip check and training, and the bot's
upload check, all read images through here. Blocking code: call it in a thread or worker.
"""

from __future__ import annotations

import math
import struct
import zipfile
from dataclasses import dataclass
from typing import IO

from PIL import Image

MiB = 1024 * 1024
# Bytes per pixel of each decoded mode (what Pillow holds in memory for one image).
_BYTES_PER_PIXEL = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "La": 2,
    "PA": 2,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
}
# Modes Image.reduce works on directly; others are converted to RGB(A) first (a full copy).
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "RGBX"})
# libwebp's animation decoder keeps two RGBA canvases; Pillow copies the frame twice more.
_WEBP_BYTES_PER_PIXEL = 16
# Pillow's own refusal (DecompressionBombError) starts at twice this many pixels.
_PILLOW_LIMIT = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageRefused(ValueError):
    """An image (or zip entry) that will not be decoded; the message says why, for the member."""


class NotAnImage(ImageRefused):
    """The bytes are not an image Pillow can read, or its data is damaged or truncated."""


@dataclass(frozen=True)
class ImageBounds:
    """What one image may cost: pixels it declares, memory to decode it, frames."""

    max_pixels: int = 50_000_000
    max_decode_bytes: int = 192 * MiB
    max_frames: int = 100


@dataclass(frozen=True)
class ImageHeader:
    """What an image declares, read without decoding it."""

    format: str
    width: int
    height: int
    frames: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _megapixels(pixels: float) -> str:
    return f"{pixels / 1e6:.0f}" if pixels >= 10e6 else f"{pixels / 1e6:.1f}"


def open_image(fh: IO[bytes], formats: frozenset[str]) -> Image.Image:
    """Open (header only) an image of one of ``formats``; raise :class:`ImageRefused`."""
    try:
        img = Image.open(fh, formats=sorted(formats))
    except Image.DecompressionBombError as exc:
        raise ImageRefused(
            f"it declares more than {_megapixels(_PILLOW_LIMIT)} megapixels"
        ) from exc
    except Exception as exc:  # Pillow raises many types for files it cannot identify
        raise NotAnImage("it does not decode (not an image we can read)") from exc
    return img


def _target(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """The size to decode at: the short side brought down to ``short_side`` (never up)."""
    if short_side is None or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


def _jpeg_scale(width: int, height: int, target: tuple[int, int]) -> int:
    """The largest libjpeg scale (1, 2, 4, 8) whose output still covers ``target``."""
    for scale in (8, 4, 2):
        if math.ceil(width / scale) >= target[0] and math.ceil(height / scale) >= target[1]:
            return scale
    return 1


def decode_cost(img: Image.Image, short_side: int | None) -> int:
    """Bytes Pillow will hold while :func:`decode` reads ``img`` (an upper estimate)."""
    width, height = img.size
    target = _target(width, height, short_side)
    bands = len(img.getbands())
    out = target[0] * target[1] * 3
    if img.format == "JPEG":
        scale = _jpeg_scale(width, height, target)
        decoded = math.ceil(width / scale) * math.ceil(height / scale) * bands
        # Progressive JPEGs are decoded from a buffer of every coefficient (2 bytes each).
        coefficients = width * height * bands * 2 if img.info.get("progressive") else 0
        return decoded + coefficients + out
    if img.format == "WEBP":
        return width * height * _WEBP_BYTES_PER_PIXEL + out
    bpp = _BYTES_PER_PIXEL.get(img.mode, 4)
    converted = 0 if img.mode in _REDUCIBLE else width * height * 4
    # Reducing or resizing with alpha works on a premultiplied copy (RGBA -> RGBa).
    premultiplied = width * height * bpp if img.mode in ("RGBA", "LA") else 0
    return width * height * bpp + converted + premultiplied + out


def check_header(img: Image.Image, bounds: ImageBounds, short_side: int | None) -> ImageHeader:
    """What ``img`` declares, refused (:class:`ImageRefused`) past ``bounds``; decodes nothing."""
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageRefused("it declares no pixels")
    if width * height > bounds.max_pixels:
        raise ImageRefused(
            f"it is {width}x{height} ({_megapixels(width * height)} megapixels); "
            f"at most {_megapixels(bounds.max_pixels)} megapixels are accepted"
        )
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames > bounds.max_frames:
        raise ImageRefused(
            f"it is an animation of {frames} frames; at most {bounds.max_frames} are "
            "accepted (only the first is used)"
        )
    cost = decode_cost(img, short_side)
    if cost > bounds.max_decode_bytes:
        raise ImageRefused(
            f"it is {width}x{height} {img.format}, which takes about {cost // MiB} MB to "
            f"decode; at most {bounds.max_decode_bytes // MiB} MB is allowed (send it smaller)"
        )
    return ImageHeader(str(img.format), width, height, frames)


def decode(img: Image.Image, short_side: int | None = None, *, upright: bool = True) -> Image.Image:
    """The first frame of ``img`` as RGB, its short side brought down to ``short_side``.

    Call :func:`check_header` first. JPEGs are decoded by libjpeg at a reduced scale
    (draft) when that still covers the size; other formats are reduced right after
    decoding, before any conversion. With ``upright``, the EXIF orientation is applied.
    """
    width, height = img.size
    target = _target(width, height, short_side)
    orientation = img.getexif().get(0x0112) if upright else None
    try:
        if img.format == "JPEG" and target != (width, height):
            img.draft("RGB", target)
        img.load()  # the first frame only: nothing here seeks to later ones
        out: Image.Image = img
        if out.mode not in _REDUCIBLE:
            out = out.convert("RGBA" if "A" in out.getbands() else "RGB")
        factor = min(out.size) // min(target)
        if factor >= 2:
            out = out.reduce(factor)
        if out.size != target:
            out = out.resize(target, Image.Resampling.BICUBIC)
        rgb = out.convert("RGB") if out.mode != "RGB" else out
        if rgb is img:
            rgb = img.copy()
    except ImageRefused:
        raise
    except Exception as exc:  # truncated data, bad chunks, checksum errors
        raise NotAnImage("it does not decode (damaged or truncated)") from exc
    method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return rgb.transpose(method) if method is not None else rgb


# -- zips ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZipEnd:
    """What a zip's end record declares, read before the central directory is parsed."""

    entries: int
    directory_bytes: int


def zip_end(fh: IO[bytes]) -> ZipEnd | None:
    """The entry count and central directory size a zip declares (``None``: no end record).

    Python's zipfile builds an object per entry as it opens the archive; a few MB of
    central directory is millions of entries, so the count is read from the end first.
    """
    fh.seek(0, 2)
    size = fh.tell()
    tail_len = min(size, 22 + 65535)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    entries, directory = struct.unpack("<HI", tail[at + 10 : at + 16])
    locator = at - 20
    if (entries == 0xFFFF or directory == 0xFFFFFFFF) and tail[locator : locator + 4] == (
        b"PK\x06\x07"
    ):
        (record_at,) = struct.unpack("<Q", tail[locator + 8 : locator + 16])
        if record_at + 56 <= size:
            fh.seek(record_at)
            record = fh.read(56)
            if record[:4] == b"PK\x06\x06":
                entries, directory = struct.unpack("<QQ", record[32:48])
    return ZipEnd(int(entries), int(directory))


def drain(fh: IO[bytes]) -> None:
    """Read an open zip entry to its end, so that its size and CRC are checked."""
    while fh.read(MiB):
        pass


def read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """An entry's bytes, streamed: refused past ``cap`` or past what its header declares."""
    if info.file_size > cap:
        raise ImageRefused(f"it unpacks to {info.file_size} bytes; at most {cap} are accepted")
    parts: list[bytes] = []
    total = 0
    try:
        with zf.open(info) as fh:
            while chunk := fh.read(MiB):
                total += len(chunk)
                if total > min(cap, info.file_size):
                    raise ImageRefused("it holds more data than its header declares")
                parts.append(chunk)
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        raise ImageRefused(
            "it does not unpack (its size or checksum does not match the zip)"
        ) from exc
    return b"".join(parts)


def is_unsafe_path(name: str) -> bool:
    """Absolute, drive-letter or ``..`` paths (with either separator)."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return True
    return any(part == ".." for part in name.replace("\\", "/").split("/"))


ARCHIVE_SUFFIXES = frozenset({".zip", ".7z", ".rar", ".tar", ".gz", ".tgz", ".bz2", ".xz"})


def is_archive(name: str, head: bytes = b"") -> bool:
    """A zip (or other archive) inside the zip, by its name or its first bytes."""
    lower = name.lower()
    return any(lower.endswith(s) for s in ARCHIVE_SUFFIXES) or head[:4] == b"PK\x03\x04"
