"""Checks and transforms of members' files, before anything reaches Ta-da.

Audio samples are decoded by ffmpeg (the imageio-ffmpeg wheel's), confined
(:mod:`engine.confine`), to 16 kHz mono, with the container detected from the bytes and
forced, so that a script or playlist posing as audio cannot make it read other files;
image sets are decoded with Pillow, turned upright (EXIF orientation), de-duplicated,
checked for size and zipped; a contact sheet shows the member what was kept. Every
function here blocks: callers run them in a thread (the ``*_async`` wrappers do).
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import io
import math
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from PIL import Image, ImageDraw, ImageOps

from bot.errors import UserFacingError
from engine.confine import (
    ConfinementError,
    Confiner,
    Limits,
    MiB,
    OverMemory,
    OverOutput,
    OverTime,
    process_confiner,
)
from engine.image.untrusted import (
    LISTING_LIMITS,
    ImageBounds,
    ImageRefused,
    NotAnImage,
    NotUnpacked,
    Source,
    TooManyEntries,
    ZipEntry,
    confined,
    decode_image,
    is_archive,
    is_unsafe_path,
    list_zip,
    probe_image,
)
from engine.voice.container import (
    AudioContainer,
    ContainerRefused,
    Declared,
    HeaderRefused,
    declared_format,
    detect,
    ffmpeg_decode_mono,
)

AUDIO_SUFFIXES = frozenset({".wav", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".flac", ".webm"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})
MAX_AUDIO_BYTES = 25 * 1024 * 1024
MIN_AUDIO_SECONDS = 3.0
MAX_AUDIO_SECONDS = 300.0
MAX_ZIP_BYTES = 200 * 1024 * 1024
MIN_IMAGE_SIDE = 256
MAX_IMAGES = 10
# Kept images are stored with their short side at most this: the largest native size
# of the models Ta-da trains on (SDXL); bigger photos are decoded at reduced size.
MAX_KEPT_SIDE = 1024
MAX_SET_IMAGES = 50  # what Ta-da trains on at most
MAX_SET_PIXELS = MAX_SET_IMAGES * MAX_KEPT_SIDE * MAX_KEPT_SIDE * 4
# What a zip may declare before anything in it is read.
MAX_ZIP_ENTRIES = 2000
MAX_ENTRY_BYTES = 100 * 1024 * 1024
MAX_UNPACKED_BYTES = 512 * 1024 * 1024
MAX_COMPRESSION_RATIO = 100
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF"})
IMAGE_BOUNDS = ImageBounds()
# Audio samples are decoded to 16-bit mono at this rate: enough to measure them.
DECODE_RATE = 16000
# What one confined ffmpeg decode may cost (its output cap is set per call).
AUDIO_LIMITS = Limits(memory_bytes=256 * MiB, cpu_seconds=20, wall_seconds=120)


class MediaRejected(UserFacingError):
    """A member's file cannot be used; the message says why and what to send instead."""

    default_reason = "media_rejected"


@dataclass(frozen=True, slots=True)
class AudioInfo:
    """What a decoded audio sample measured."""

    duration_seconds: float
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class Refused:
    """An image left out of a set, and why (said to the member)."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class ImageSet:
    """A zip ready to upload, the names it holds, and the images that were refused."""

    zip_bytes: bytes
    kept: tuple[str, ...]
    refused: tuple[Refused, ...]
    thumbnails: tuple[bytes, ...]


def suffix_of(file_name: str) -> str:
    """The lower-case extension of a file name (``""`` when it has none)."""
    return PurePosixPath(file_name).suffix.lower()


def ffmpeg_path() -> str:
    """The ffmpeg binary: the imageio-ffmpeg wheel's, else one on PATH."""
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        found = shutil.which("ffmpeg")
        if found is None:
            raise MediaRejected("The bot cannot decode audio here (no ffmpeg).") from None
        return found


_UNDECODABLE = (
    "That file could not be decoded as audio. Send a WAV, MP3, OGG, M4A, FLAC or WebM "
    "recording of your voice."
)


def _container(data: bytes) -> tuple[AudioContainer, Declared | None]:
    try:
        fh = io.BytesIO(data)
        container = detect(fh)
        return container, declared_format(fh, container)
    except HeaderRefused as exc:
        raise MediaRejected(
            f"That recording cannot be used: {exc}. Send an ordinary WAV, MP3, OGG, M4A, "
            "FLAC or WebM recording."
        ) from exc
    except ContainerRefused as exc:
        if "other files" in str(exc):
            raise MediaRejected(
                "That recording refers to media in other files. Send one self-contained "
                "WAV, MP3, OGG, M4A, FLAC or WebM recording."
            ) from exc
        if str(exc).startswith("the m4a file"):  # a damaged or hostile box structure
            raise MediaRejected(f"That recording cannot be used: {exc}.") from exc
        raise MediaRejected(
            "That file could not be decoded as audio: it is not a WAV, MP3, OGG, M4A, FLAC "
            "or WebM recording."
        ) from exc


def _decode_refusal(exc: ConfinementError) -> MediaRejected:
    if isinstance(exc, OverMemory):
        return MediaRejected(
            "That recording needs more memory to decode than a voice sample should (its "
            "header may be damaged). Send an ordinary WAV, MP3, OGG, M4A, FLAC or WebM file."
        )
    if isinstance(exc, OverTime):
        return MediaRejected("That recording took too long to decode. Send a shorter one.")
    if isinstance(exc, OverOutput):
        return MediaRejected("That recording decodes to more audio than a voice sample has.")
    return MediaRejected(_UNDECODABLE)


def decode_mono(
    data: bytes,
    container: AudioContainer,
    max_seconds: float,
    *,
    confiner: Confiner | None = None,
) -> array.array[int]:
    """``data`` decoded by a confined ffmpeg to 16-bit mono samples at :data:`DECODE_RATE`.

    The rate and channels are fixed whatever the file declares, decoding stops just past
    ``max_seconds`` and the output is capped at what that takes (about 10 MB for 5 min), so
    a small file declaring a huge rate or many channels cannot unpack into gigabytes here;
    ffmpeg itself runs with one thread under the limits of :mod:`engine.confine`. Raises
    :class:`MediaRejected` (a limit hit included).
    """
    seconds = max_seconds + 1.0
    # A file, not stdin: an m4a's index often comes last, and reading it needs seeking.
    # ffmpeg may open that one file only (see engine.voice.container.ffmpeg_input).
    with tempfile.TemporaryDirectory(prefix="tada-audio-") as tmp:
        source = Path(tmp) / "sample"
        source.write_bytes(data)
        cmd = ffmpeg_decode_mono(ffmpeg_path(), container, f"file:{source}", seconds, DECODE_RATE)
        limits = replace(AUDIO_LIMITS, output_bytes=int((seconds + 1.0) * DECODE_RATE) * 2)
        try:
            raw = (confiner or process_confiner()).run_command(cmd, limits)
        except ConfinementError as exc:
            raise _decode_refusal(exc) from exc
    if not raw:
        raise MediaRejected(_UNDECODABLE)
    samples = array.array("h")
    samples.frombytes(raw[: len(raw) - len(raw) % 2])
    if sys.byteorder != "little":
        samples.byteswap()
    return samples


def check_audio(
    data: bytes,
    file_name: str,
    *,
    min_seconds: float = MIN_AUDIO_SECONDS,
    max_seconds: float = MAX_AUDIO_SECONDS,
    max_bytes: int = MAX_AUDIO_BYTES,
) -> AudioInfo:
    """Decode a voice sample and check its length; raises :class:`MediaRejected`.

    Every container, WAV included, is decoded by a confined ffmpeg (:func:`decode_mono`);
    no header is parsed in this process but by the checks of :mod:`engine.voice.container`
    (bounded), which refuse a declared rate, channel count or sample size no recording has.
    """
    if suffix_of(file_name) not in AUDIO_SUFFIXES:
        raise MediaRejected(
            f"`{file_name}` is not an audio file the bot takes "
            f"({', '.join(sorted(AUDIO_SUFFIXES))})."
        )
    if len(data) > max_bytes:
        raise MediaRejected(f"That recording is over {max_bytes // (1024 * 1024)} MB.")
    if not data:
        raise MediaRejected("That file is empty.")
    container, declared = _container(data)
    samples = decode_mono(data, container, max_seconds)
    seconds = len(samples) / DECODE_RATE
    if seconds < min_seconds:
        raise MediaRejected(
            f"That recording is {seconds:.1f} s long; send at least {min_seconds:.0f} s of "
            "clear speech (10 to 60 s works best)."
        )
    if seconds > max_seconds:
        raise MediaRejected(
            f"That recording is {seconds:.0f} s long; send at most {max_seconds:.0f} s."
        )
    if not any(samples):
        raise MediaRejected("That recording is silent.")
    return AudioInfo(
        duration_seconds=seconds,
        sample_rate=declared.sample_rate if declared else DECODE_RATE,
        channels=declared.channels if declared else 1,
    )


async def check_audio_async(data: bytes, file_name: str, **limits: float) -> AudioInfo:
    """:func:`check_audio` in a thread."""
    return await asyncio.to_thread(check_audio, data, file_name, **limits)  # type: ignore[arg-type]


def _thumbnail(image: Image.Image, side: int = 160) -> bytes:
    thumb = ImageOps.fit(image.convert("RGB"), (side, side))
    out = io.BytesIO()
    thumb.save(out, "PNG")
    return out.getvalue()


def _read_one(source: Source, min_side: int, bounds: ImageBounds) -> tuple[int, int]:
    """What one image declares, checked (a confined child); the size it is kept at."""
    try:
        header = confined(
            probe_image,
            source,
            IMAGE_FORMATS,
            IMAGE_FORMATS,
            bounds,
            MAX_KEPT_SIDE,
            0,
            limits=bounds.limits(),
        )
    except NotUnpacked as exc:
        raise ImageRefused("could not be unpacked from the zip") from exc
    except NotAnImage as exc:
        raise ImageRefused("could not be decoded") from exc
    if min(header.width, header.height) < min_side:
        raise ImageRefused(f"too small ({header.width}x{header.height}, need {min_side} px)")
    scale = min(1.0, MAX_KEPT_SIDE / min(header.width, header.height))
    return round(header.width * scale), round(header.height * scale)


def _decode_one(source: Source, bounds: ImageBounds) -> Image.Image:
    """One image, upright, its short side at most :data:`MAX_KEPT_SIDE` (a confined child)."""
    try:
        image = confined(
            decode_image,
            source,
            IMAGE_FORMATS,
            bounds,
            MAX_KEPT_SIDE,
            True,
            True,
            limits=bounds.limits(),
        )
    except NotUnpacked as exc:
        raise ImageRefused("could not be unpacked from the zip") from exc
    except NotAnImage as exc:
        raise ImageRefused("could not be decoded") from exc
    assert image is not None
    return image


def _build(
    files: Iterable[tuple[str, Source]],
    refused: list[Refused],
    *,
    min_side: int,
    bounds: ImageBounds | None = None,
) -> ImageSet:
    """Check, decode, turn upright, de-duplicate and zip images (PNG inside, numbered).

    Refusals that cost nothing come first: by name, then by count (candidates past
    :data:`MAX_SET_IMAGES` are not read), then by what each header declares (pixels,
    frames, decode cost, metadata; the set's pixels), and only then is each decoded.
    Every read of a member's bytes runs in a confined child (:mod:`engine.confine`).
    """
    bounds = bounds or IMAGE_BOUNDS
    candidates: list[tuple[str, Source]] = []
    for name, source in files:
        if suffix_of(name) not in IMAGE_SUFFIXES:
            refused.append(Refused(name, "not an image file"))
        elif len(candidates) >= MAX_SET_IMAGES:
            refused.append(Refused(name, f"more than {MAX_SET_IMAGES} images in the set"))
        else:
            candidates.append((name, source))
    declared: list[tuple[str, Source]] = []
    set_pixels = 0
    for name, source in candidates:
        try:
            width, height = _read_one(source, min_side, bounds)
        except ImageRefused as exc:
            refused.append(Refused(name, str(exc)))
            continue
        set_pixels += width * height
        if set_pixels > MAX_SET_PIXELS:
            refused.append(Refused(name, "the set is already as large as the bot takes"))
            set_pixels -= width * height
            continue
        declared.append((name, source))
    seen: set[str] = set()
    kept: list[str] = []
    thumbs: list[bytes] = []
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, source in declared:
            try:
                image = _decode_one(source, bounds)
            except ImageRefused as exc:
                refused.append(Refused(name, str(exc)))
                continue
            digest = hashlib.sha256(image.tobytes()).hexdigest()
            if digest in seen:
                refused.append(Refused(name, "duplicate of another image"))
                continue
            seen.add(digest)
            png = io.BytesIO()
            image.save(png, "PNG")
            archive.writestr(f"{len(kept) + 1:02d}.png", png.getvalue())
            kept.append(name)
            thumbs.append(_thumbnail(image))
    if not kept:
        why = "; ".join(f"`{r.name}`: {r.reason}" for r in refused) or "no images were sent"
        raise MediaRejected(f"None of those images can be used ({why}).")
    return ImageSet(out.getvalue(), tuple(kept), tuple(refused), tuple(thumbs))


def build_image_set(
    files: Sequence[tuple[str, bytes]], *, min_side: int = MIN_IMAGE_SIDE
) -> ImageSet:
    """Decode, turn upright, de-duplicate and zip images (PNG inside, numbered).

    Each image's header is checked before it is decoded (pixels, frames, the memory its
    decoding takes); larger ones are decoded at reduced size, first frame only, in a
    confined child. Raises :class:`MediaRejected` when no image is usable, naming what
    was wrong.
    """
    return _build([(name, Source(data=data)) for name, data in files], [], min_side=min_side)


def _zip_entries(
    path: str, entries: Sequence[ZipEntry], refused: list[Refused]
) -> Iterator[tuple[str, Source]]:
    """The entries worth decoding; the others go to ``refused`` with a reason."""
    declared = sum(i.file_size for i in entries)
    packed = sum(i.compress_size for i in entries)
    if declared > MAX_UNPACKED_BYTES:
        raise MediaRejected(
            f"That zip unpacks to {declared // (1024 * 1024)} MB; the bot takes at most "
            f"{MAX_UNPACKED_BYTES // (1024 * 1024)} MB."
        )
    if declared > 1024 * 1024 and declared > packed * MAX_COMPRESSION_RATIO:
        raise MediaRejected("That zip unpacks to far more than its size (a zip bomb?).")
    for info in entries:
        name = info.name
        if info.is_dir or "__MACOSX" in name:
            continue
        if is_unsafe_path(name):
            refused.append(Refused(name, "unsafe path (absolute or with '..')"))
            continue
        if PurePosixPath(name).name.startswith("."):
            continue  # hidden files of desktop tools (.DS_Store, ._img.png)
        if is_archive(name):
            refused.append(Refused(name, "zips inside the zip are not taken"))
            continue
        if info.flag_bits & 0x1:
            refused.append(Refused(name, "encrypted"))
            continue
        if info.file_size > MAX_ENTRY_BYTES:
            refused.append(
                Refused(name, f"over {MAX_ENTRY_BYTES // (1024 * 1024)} MB once unpacked")
            )
            continue
        yield name, Source(path, name)


def inspect_zip(data: bytes, *, min_side: int = MIN_IMAGE_SIDE) -> ImageSet:
    """Check a member's zip the same way and re-zip what is usable.

    Its directory is listed in a confined child (its end records read as Python's
    zipfile reads them, so a ZIP64 record cannot hide millions of entries); what the
    entries declare is checked before anything is read (entries, sizes, ratio); entries
    are streamed one at a time from a private copy on disk, each in a confined child.
    """
    if len(data) > MAX_ZIP_BYTES:
        raise MediaRejected(f"That zip is over {MAX_ZIP_BYTES // (1024 * 1024)} MB.")
    with tempfile.TemporaryDirectory(prefix="tada-zip-") as tmp:
        path = Path(tmp) / "set.zip"
        path.write_bytes(data)
        try:
            entries = confined(
                list_zip,
                str(path),
                MAX_ZIP_ENTRIES,
                MAX_ZIP_ENTRIES * 4096,
                limits=LISTING_LIMITS,
            )
        except TooManyEntries as exc:
            raise MediaRejected(
                f"That zip holds {exc.entries} entries; the bot takes at most {exc.limit}."
            ) from exc
        except ImageRefused as exc:
            raise MediaRejected(f"That zip cannot be used: {exc}.") from exc
        refused: list[Refused] = []
        return _build(_zip_entries(str(path), entries, refused), refused, min_side=min_side)


def contact_sheet(thumbnails: Sequence[bytes], *, columns: int = 5, side: int = 160) -> bytes:
    """A PNG grid of thumbnails, so the member sees what the LoRA will learn from."""
    count = max(1, len(thumbnails))
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    pad = 6
    sheet = Image.new("RGB", (cols * (side + pad) + pad, rows * (side + pad) + pad), (32, 34, 37))
    draw = ImageDraw.Draw(sheet)
    for index, data in enumerate(thumbnails):
        x = pad + (index % cols) * (side + pad)
        y = pad + (index // cols) * (side + pad)
        with Image.open(io.BytesIO(data)) as thumb:
            sheet.paste(thumb.convert("RGB").resize((side, side)), (x, y))
        draw.text((x + 4, y + 4), str(index + 1), fill=(255, 255, 255))
    out = io.BytesIO()
    sheet.save(out, "PNG")
    return out.getvalue()


async def build_image_set_async(files: Sequence[tuple[str, bytes]], **kw: int) -> ImageSet:
    """:func:`build_image_set` in a thread."""
    return await asyncio.to_thread(build_image_set, files, **kw)


async def inspect_zip_async(data: bytes, **kw: int) -> ImageSet:
    """:func:`inspect_zip` in a thread."""
    return await asyncio.to_thread(inspect_zip, data, **kw)


async def contact_sheet_async(thumbnails: Sequence[bytes]) -> bytes:
    """:func:`contact_sheet` in a thread."""
    return await asyncio.to_thread(contact_sheet, thumbnails)
