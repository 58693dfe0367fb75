"""Members' images and zips, read with bounded memory whatever they claim to be.

A few kilobytes of PNG can declare 13000x13000 pixels, a JPEG header can claim 60000x60000,
an animation can declare a million frames, and a zip's central directory can hold two
million entries or sizes that lie. Everything here looks at what a file declares first
(image headers, the zip's end record) and refuses what would cost too much before
decoding it; what is decoded is decoded at the size it is needed at (JPEG draft, reduce),
first frame only. The reasons are written for the member.

The estimates are the cheap first gate; what bounds the work by construction is that every
read of a member's bytes (the zip's directory, captions, each image's header and its
decode) runs in a confined child process (:mod:`engine.confine`: address space of
:attr:`ImageBounds.max_decode_bytes` plus :data:`DECODE_SLACK_BYTES`, CPU seconds, wall
clock, result size), through :func:`confined`, which turns a limit hit into an
:class:`ImageRefused` naming it. The zip's end records are read as zipfile reads them
(:func:`zip_end`); metadata blocks are walked before Pillow reads them
(:func:`check_metadata`).

Pillow and the standard library only: the engine's zip check and training, and the bot's
upload check, all read images through here. Blocking code: call it in a thread or worker.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from PIL import Image, PngImagePlugin

from engine.confine import (
    ChildFailed,
    ConfinementError,
    Limits,
    OverMemory,
    OverOutput,
    process_confiner,
)

MiB = 1024 * 1024
T = TypeVar("T")
# Address space a confined decode may use beyond the decode estimate's bound: the zip
# reader, the decoders' own buffers and tables, the result on its way back.
DECODE_SLACK_BYTES = 128 * MiB
# Metadata (everything but pixel data) one image may carry, read or skipped: PNG chunks
# other than IDAT/fdAT, JPEG segments before the first scan, WebP chunks other than the
# bitstream. Colour profiles and EXIF blocks are kilobytes; a block past this is refused
# before Pillow reads it whole.
MAX_METADATA_BLOCK = 8 * MiB
MAX_METADATA_TOTAL = 16 * MiB
# Scans a JPEG may have: a progressive JPEG has about ten (libjpeg's default script).
MAX_JPEG_SCANS = 100
# Bytes per pixel of each decoded mode as Pillow stores it: one byte for the 8-bit
# single-band modes, two for the 16-bit ones, and four for everything else (Pillow keeps
# LA, PA, RGB, YCbCr, LAB and HSV in four-byte pixels, like RGBA).
_BYTES_PER_PIXEL = {
    "1": 1,
    "L": 1,
    "P": 1,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "I;16N": 2,
}
_DEFAULT_BYTES_PER_PIXEL = 4
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


class NotUnpacked(NotAnImage):
    """A zip entry that does not unpack: its size or CRC lies, or its method is unknown."""


class TooManyEntries(ImageRefused):
    """A zip whose directory holds (or declares) more entries than accepted."""

    def __init__(self, entries: int, limit: int) -> None:
        super().__init__(f"{entries} entries; at most {limit} are accepted")
        self.entries = entries
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        return (TooManyEntries, (self.entries, self.limit))


@dataclass(frozen=True)
class ImageBounds:
    """What one image may cost: pixels it declares, memory to decode it, frames."""

    max_pixels: int = 50_000_000
    max_decode_bytes: int = 192 * MiB
    max_frames: int = 100
    max_aspect: float = 8.0  # the long side at most this many times the short one
    cpu_seconds: int = 20  # CPU one confined decode may take

    def limits(self, output_bytes: int = 128 * MiB) -> Limits:
        """The OS limits of one confined read or decode of an image within these bounds."""
        return Limits(
            memory_bytes=self.max_decode_bytes + DECODE_SLACK_BYTES,
            cpu_seconds=self.cpu_seconds,
            wall_seconds=max(30.0, 3.0 * self.cpu_seconds),
            output_bytes=output_bytes,
        )


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
        bpp = _BYTES_PER_PIXEL.get(img.mode, _DEFAULT_BYTES_PER_PIXEL)
        decoded = math.ceil(width / scale) * math.ceil(height / scale) * bpp
        # Progressive JPEGs are decoded from a buffer of every coefficient (2 bytes each).
        coefficients = width * height * bands * 2 if img.info.get("progressive") else 0
        return decoded + coefficients + out
    if img.format == "WEBP":
        return width * height * _WEBP_BYTES_PER_PIXEL + out
    bpp = _BYTES_PER_PIXEL.get(img.mode, _DEFAULT_BYTES_PER_PIXEL)
    converted = 0 if img.mode in _REDUCIBLE else width * height * 4
    # Reducing or resizing with alpha works on a premultiplied copy (RGBA -> RGBa).
    premultiplied = width * height * 4 if img.mode in ("RGBA", "LA") else 0
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
    long_side, short = max(width, height), min(width, height)
    if long_side > bounds.max_aspect * short:
        raise ImageRefused(
            f"it is {width}x{height}, longer than 1:{bounds.max_aspect:g}; "
            "crop it closer to a square"
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


class ZipDisagrees(ImageRefused):
    """The zip's end records say different things: refused rather than guessed at."""


_PLAIN_END = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")


def zip_end(fh: IO[bytes]) -> ZipEnd | None:
    """The entry count and central directory size a zip declares (``None``: no end record).

    Python's zipfile builds an object per entry as it opens the archive; a few MB of
    central directory is millions of entries, so the count is read from the end first,
    the way zipfile itself will read it: its own end-record search (the record at the very
    end, else the last signature in the comment area), and the ZIP64 record right before
    the ZIP64 locator, whatever the plain record says. Where a ZIP64 record is present the
    larger of each pair counts, and a plain field that is not the ZIP64 escape (0xFFFF,
    0xFFFFFFFF) yet differs from the ZIP64 one is refused (:class:`ZipDisagrees`), as is
    a locator pointing elsewhere than the record zipfile reads.
    """
    try:
        endrec = zipfile._EndRecData(fh)  # type: ignore[attr-defined]  # zipfile's own reader
    except zipfile.BadZipFile as exc:
        raise ZipDisagrees("it is a zip split over several disks, not accepted") from exc
    except (OSError, struct.error, ValueError) as exc:
        raise ZipDisagrees("its end record cannot be read") from exc
    if endrec is None:
        return None
    location = int(endrec[zipfile._ECD_LOCATION])  # type: ignore[attr-defined]
    fh.seek(location)
    raw = fh.read(_PLAIN_END.size)
    if len(raw) != _PLAIN_END.size:
        return None
    _, _, _, plain_here, plain_entries, plain_size, _, _ = _PLAIN_END.unpack(raw)
    entries = max(int(endrec[zipfile._ECD_ENTRIES_TOTAL]), plain_entries, plain_here)  # type: ignore[attr-defined]
    directory = max(int(endrec[zipfile._ECD_SIZE]), plain_size)  # type: ignore[attr-defined]
    locator_at = location - _ZIP64_LOCATOR.size
    if locator_at < 0:
        return ZipEnd(entries, directory)
    fh.seek(locator_at)
    locator = fh.read(_ZIP64_LOCATOR.size)
    if len(locator) != _ZIP64_LOCATOR.size or locator[:4] != b"PK\x06\x07":
        return ZipEnd(entries, directory)
    _, _, pointed, _ = _ZIP64_LOCATOR.unpack(locator)
    record_at = locator_at - _ZIP64_END.size
    record = b""
    if record_at >= 0:
        fh.seek(record_at)
        record = fh.read(_ZIP64_END.size)
    if len(record) != _ZIP64_END.size or record[:4] != b"PK\x06\x06":
        raise ZipDisagrees("its ZIP64 locator points at no ZIP64 end record")
    if pointed != record_at:
        raise ZipDisagrees("its ZIP64 locator and its ZIP64 end record disagree")
    fields = _ZIP64_END.unpack(record)
    z_here, z_entries, z_size = int(fields[6]), int(fields[7]), int(fields[8])
    for plain, zip64, escape in (
        (plain_here, z_here, 0xFFFF),
        (plain_entries, z_entries, 0xFFFF),
        (plain_size, z_size, 0xFFFFFFFF),
    ):
        if plain not in (escape, zip64):
            raise ZipDisagrees(
                "its end records disagree (the ZIP64 one and the plain one say different "
                "things about its directory)"
            )
    return ZipEnd(max(entries, z_entries, z_here), max(directory, z_size))


def drain(fh: IO[bytes]) -> None:
    """Read an open zip entry to its end, so that its size and CRC are checked."""
    while fh.read(MiB):
        pass


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


# -- metadata, walked before Pillow reads it ---------------------------------------------


def _skip(fh: IO[bytes], n: int) -> bool:
    """Read and drop ``n`` bytes (streamed); False when the data ends first."""
    while n > 0:
        got = fh.read(min(n, MiB))
        if not got:
            return False
        n -= len(got)
    return True


def _too_much_metadata(size: int, total: int) -> None:
    if size > MAX_METADATA_BLOCK or total > MAX_METADATA_TOTAL:
        raise ImageRefused(
            f"it carries {max(size, total) // MiB} MB or more of metadata besides its "
            f"pixels; at most {MAX_METADATA_TOTAL // MiB} MB is accepted"
        )


def _walk_png(fh: IO[bytes]) -> None:
    total = 0
    while True:
        head = fh.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        if kind in (b"IDAT", b"fdAT"):
            if not _skip(fh, length + 4):
                return
            continue
        total += length
        _too_much_metadata(length, total)
        if kind == b"IEND" or not _skip(fh, length + 4):
            return


def _walk_jpeg(fh: IO[bytes]) -> None:
    total = 0
    while True:
        byte = fh.read(1)
        if not byte:
            return
        if byte != b"\xff":
            continue
        marker = fh.read(1)
        while marker == b"\xff":
            marker = fh.read(1)
        if not marker:
            return
        if marker == b"\xda":  # the first scan: the rest is scans and their tables
            _count_scans(fh)
            return
        if marker in (b"\x00", b"\xd8") or b"\xd0" <= marker <= b"\xd7":
            continue
        size = fh.read(2)
        if len(size) < 2:
            return
        (length,) = struct.unpack(">H", size)
        total += length
        _too_much_metadata(length, total)
        if not _skip(fh, length - 2):
            return


def _count_scans(fh: IO[bytes]) -> None:
    """Refuse a JPEG of more than :data:`MAX_JPEG_SCANS` scans (each is a pass over every
    block: a few hundred repeated scans cost minutes of CPU). In entropy-coded data a
    0xFF byte is always followed by 0x00, so ``FF DA`` is a start-of-scan marker."""
    scans = 1
    carry = b""
    while chunk := fh.read(MiB):
        data = carry + chunk
        scans += data.count(b"\xff\xda")
        if scans > MAX_JPEG_SCANS:
            raise ImageRefused(
                f"it is a progressive JPEG of more than {MAX_JPEG_SCANS} scans; "
                "save it again (baseline or standard progressive)"
            )
        carry = data[-1:] if data.endswith(b"\xff") else b""


_WEBP_PIXELS = frozenset({b"VP8 ", b"VP8L", b"ALPH", b"ANMF", b"VP8X", b"ANIM"})


def _walk_webp(fh: IO[bytes]) -> None:
    total = 0
    while True:
        head = fh.read(8)
        if len(head) < 8:
            return
        kind, length = struct.unpack("<4sI", head)
        if kind not in _WEBP_PIXELS:
            total += length
            _too_much_metadata(length, total)
        if not _skip(fh, length + (length & 1)):
            return


def check_metadata(fh: IO[bytes]) -> None:
    """Walk the blocks of a PNG, JPEG or WebP stream (others are let through) and refuse
    one whose metadata is larger than :data:`MAX_METADATA_TOTAL`, before Pillow reads any
    of it into memory (it keeps private PNG chunks, APP markers and WebP payloads whole)."""
    head = fh.read(2)
    if head == b"\xff\xd8":
        _walk_jpeg(fh)
        return
    head += fh.read(6)
    if head == b"\x89PNG\r\n\x1a\n":
        _walk_png(fh)
        return
    head += fh.read(4)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        _walk_webp(fh)


# -- confined reading: what a child process does -----------------------------------------


@dataclass(frozen=True)
class Source:
    """Where an image's bytes are: an entry of the zip at ``path``, a file, or ``data``."""

    path: str | None = None
    member: str | None = None
    data: bytes | None = None

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        if self.data is not None:
            yield io.BytesIO(self.data)
        elif self.member is None:
            assert self.path is not None
            with open(self.path, "rb") as fh:
                yield fh
        else:
            assert self.path is not None
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as fh:
                yield fh


@dataclass(frozen=True)
class ZipEntry:
    """What one central directory record declares, as plain data."""

    name: str
    file_size: int
    compress_size: int
    flag_bits: int
    external_attr: int
    is_dir: bool


_SUFFIX_OF = {"JPEG": "jpg"}


def _harden_pillow() -> None:
    """In a confined child only: Pillow's own caps on text chunks, tightened."""
    PngImagePlugin.MAX_TEXT_MEMORY = MAX_METADATA_TOTAL


# What listing a zip's directory may cost (a bounded directory: a few thousand records).
LISTING_LIMITS = Limits(memory_bytes=256 * MiB, cpu_seconds=20, wall_seconds=60)


def list_zip(path: str, max_entries: int, max_directory_bytes: int) -> tuple[ZipEntry, ...]:
    """Run confined: the entries of the zip at ``path``, refused (:class:`ImageRefused`)
    past ``max_entries`` or ``max_directory_bytes`` by its end records (read as zipfile
    reads them) or by the directory itself."""
    try:
        with open(path, "rb") as fh:
            end = zip_end(fh)
        if end is not None:
            if end.entries > max_entries:
                raise TooManyEntries(end.entries, max_entries)
            if end.directory_bytes > max_directory_bytes:
                raise ImageRefused(
                    f"its directory of entries is {end.directory_bytes} bytes, too large for a set"
                )
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > max_entries:
                raise TooManyEntries(len(infos), max_entries)
            return tuple(
                ZipEntry(
                    i.filename,
                    int(i.file_size),
                    int(i.compress_size),
                    int(i.flag_bits),
                    int(i.external_attr),
                    i.is_dir(),
                )
                for i in infos
            )
    except ImageRefused:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # zipfile raises many types on a damaged directory
        raise ImageRefused(f"not a readable zip file ({type(exc).__name__})") from None


def read_texts(path: str, members: tuple[str, ...], cap: int) -> dict[str, bytes | None]:
    """Run confined: each member's bytes, streamed; ``None`` for one past ``cap`` bytes
    (at most ``cap + 1`` bytes of it are read) or one that does not unpack."""
    out: dict[str, bytes | None] = {}
    with zipfile.ZipFile(path) as zf:
        for name in members:
            try:
                with zf.open(name) as fh:
                    data = fh.read(cap + 1)
                out[name] = data if len(data) <= cap else None
            except MemoryError:
                raise
            except Exception:
                out[name] = None
    return out


def probe_image(
    source: Source,
    formats: frozenset[str],
    accepted: frozenset[str],
    bounds: ImageBounds,
    short_side: int | None,
    min_side: int,
) -> ImageHeader:
    """Run confined: what an image declares, checked against the bounds; decodes nothing.

    ``formats`` are recognised (named in a refusal); only ``accepted`` ones pass."""
    _harden_pillow()
    try:
        with source.open() as fh:
            check_metadata(fh)
        with source.open() as fh, open_image(fh, formats) as img:
            if img.format not in accepted:
                names = sorted(_SUFFIX_OF.get(f, f.lower()) for f in accepted)
                listed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
                raise ImageRefused(f"it is {img.format}, not {listed}")
            width, height = img.size
            if min(width, height) < min_side:
                raise ImageRefused(
                    f"it is {width}x{height}; each side needs at least {min_side} px"
                )
            return check_header(img, bounds, short_side)
    except ImageRefused:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # a damaged zip entry, a size that lies
        raise _not_read(exc) from None


def decode_image(
    source: Source,
    formats: frozenset[str],
    bounds: ImageBounds,
    short_side: int | None,
    upright: bool,
    keep: bool,
) -> Image.Image | None:
    """Run confined: the image decoded (:func:`decode`) after its checks; the whole entry
    is read to its end, so that its declared size and CRC are checked. The image when
    ``keep``, else ``None`` (a check only)."""
    _harden_pillow()
    try:
        with source.open() as fh:
            check_metadata(fh)
        with source.open() as fh:
            with open_image(fh, formats) as img:
                check_header(img, bounds, short_side)
                rgb = decode(img, short_side, upright=upright)
            drain(fh)
        return rgb if keep else None
    except ImageRefused:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise _not_read(exc) from None


def _not_read(exc: Exception) -> NotAnImage:
    if isinstance(exc, zipfile.BadZipFile):
        return NotUnpacked("it holds more data than its header declares (or its CRC is wrong)")
    if isinstance(exc, (NotImplementedError, RuntimeError, EOFError, zlib.error)):
        return NotUnpacked("it does not unpack from the zip (damaged or unknown compression)")
    return NotAnImage("it does not decode (damaged or truncated)")


def confined(fn: Callable[..., T], *args: Any, limits: Limits) -> T:
    """``fn(*args)`` in a confined child (:mod:`engine.confine`), the process's slots
    shared; a limit hit is an :class:`ImageRefused` that says which, for the member."""
    try:
        return process_confiner().call(fn, *args, limits=limits)
    except OverMemory:
        raise ImageRefused(
            f"it needs more than {limits.memory_bytes // MiB} MB of memory to read"
        ) from None
    except OverOutput:
        raise ImageRefused("it decodes to more data than allowed") from None
    except ChildFailed:
        raise NotAnImage("it does not decode (the decoder stopped)") from None
    except ConfinementError as exc:  # time: CPU seconds, the wall clock, the queue
        raise ImageRefused(str(exc)) from None
