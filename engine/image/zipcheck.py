"""Checks on a training zip, and reading its images once it passed.

A member's zip is untrusted: entry paths may try to escape (``..``, absolute paths),
entries may be links, sizes may lie (zip bombs), the directory may hold millions of
entries, zips may nest, images may declare more pixels than memory holds or not decode.
What the zip and each image declare is checked before anything is read, images are
streamed from the zip and decoded at the size they are needed at
(:mod:`engine.image.untrusted`). Every problem is collected, so the member fixes the zip
once rather than once per problem. Blocking code: call it in a thread or in the worker.
"""

from __future__ import annotations

import hashlib
import stat
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from engine.image.settings import ZipLimits
from engine.image.types import TrainImage
from engine.image.untrusted import (
    ImageBounds,
    ImageRefused,
    check_header,
    decode,
    drain,
    is_archive,
    is_unsafe_path,
    open_image,
    read_entry,
    zip_end,
)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
IMAGE_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
# Formats recognised only to name them in a refusal (never decoded).
_NAMED_FORMATS = IMAGE_FORMATS | {"GIF", "BMP", "TIFF"}
# A central directory bigger than this is not a set of images (names of 4 KiB each).
_DIRECTORY_BYTES_PER_ENTRY = 4096
MAX_CAPTION_CHARS = 1000
# Archive clutter from desktop tools: skipped without a mention.
_JUNK_PREFIXES = ("__MACOSX/",)
_JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
# Small entries compress extremely well for innocent reasons (blank text files).
_RATIO_FLOOR_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ZipImage:
    """An image that passed: its entry name, size and optional caption."""

    name: str
    width: int
    height: int
    caption: str | None


@dataclass(frozen=True)
class ZipReport:
    """The outcome of :func:`inspect_zip`: usable images, ignored entries, problems."""

    images: tuple[ZipImage, ...]
    ignored: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when training may start."""
        return not self.problems

    def summary(self) -> str:
        """Every problem in one line, then what was ignored (for a 400's ``detail``)."""
        text = "the zip cannot be used: " + "; ".join(self.problems)
        if self.ignored:
            shown = ", ".join(self.ignored[:10])
            more = f" and {len(self.ignored) - 10} more" if len(self.ignored) > 10 else ""
            text += f" (ignored: {shown}{more})"
        return text


def _unsafe_path(name: str) -> bool:
    return is_unsafe_path(name)


def _is_link(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return stat.S_ISLNK(mode)


def _read_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """Read an entry, refusing more bytes than its header declares (lying headers)."""
    try:
        return read_entry(zf, info, cap)
    except ImageRefused as exc:
        raise ValueError(str(exc)) from exc


def _check_image(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ZipLimits, bounds: ImageBounds
) -> tuple[int, int]:
    """Decode one entry (streamed, at the smallest size accepted) or say why it cannot be."""
    try:
        with zf.open(info) as fh:
            with open_image(fh, _NAMED_FORMATS) as img:
                if img.format not in IMAGE_FORMATS:
                    raise ValueError(f"it is {img.format}, not jpg, png or webp")
                width, height = img.size
                if min(width, height) < limits.min_side:
                    raise ValueError(
                        f"it is {width}x{height}; each side needs at least {limits.min_side} px"
                    )
                check_header(img, bounds, limits.min_side)
                decode(img, limits.min_side, upright=False)
            drain(fh)  # the rest of the entry: its declared size and CRC are checked
    except ImageRefused as exc:
        raise ValueError(str(exc)) from exc
    except zipfile.BadZipFile as exc:
        raise ValueError("it holds more data than its header declares") from exc
    return width, height


def _directory_problem(path: Path, limits: ZipLimits) -> str | None:
    """Too many entries, said by the zip's end record before Python parses its directory."""
    with path.open("rb") as fh:
        end = zip_end(fh)
    if end is None:
        return None
    if end.entries > limits.max_entries:
        return f"{end.entries} entries; at most {limits.max_entries} are accepted"
    if end.directory_bytes > limits.max_entries * _DIRECTORY_BYTES_PER_ENTRY:
        return f"its directory of entries is {end.directory_bytes} bytes, too large for a set"
    return None


def inspect_zip(path: Path, limits: ZipLimits) -> ZipReport:
    """Check a training zip against ``limits``; never raises for bad content."""
    problems: list[str] = []
    ignored: list[str] = []
    try:
        directory = _directory_problem(path, limits)
        if directory is not None:
            return ZipReport((), (), (directory,))
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        return ZipReport((), (), (f"not a readable zip file ({exc})",))
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            problems.append(f"{len(infos)} entries; at most {limits.max_entries} are accepted")
            return ZipReport((), (), tuple(problems))
        declared = sum(i.file_size for i in infos)
        packed = sum(i.compress_size for i in infos)
        if declared > limits.max_uncompressed_bytes:
            problems.append(
                f"it unpacks to {declared} bytes; at most {limits.max_uncompressed_bytes} "
                "are accepted"
            )
        if declared > _RATIO_FLOOR_BYTES and declared > packed * limits.max_compression_ratio:
            problems.append(
                f"compression ratio {declared / max(packed, 1):.0f}:1 is above "
                f"{limits.max_compression_ratio:.0f}:1 (zip bomb?)"
            )
        if problems:
            # Reading entries of a suspected bomb is exactly what it wants; stop here.
            return ZipReport((), (), tuple(problems))
        candidates: dict[str, zipfile.ZipInfo] = {}
        texts: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            if _unsafe_path(name):
                problems.append(f"{name!r}: unsafe path (absolute or '..')")
                continue
            if _is_link(info):
                problems.append(f"{name!r}: links are not accepted")
                continue
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                problems.append(f"{name!r}: encrypted entries are not accepted")
                continue
            pure = PurePosixPath(name)
            if name.startswith(_JUNK_PREFIXES) or pure.name in _JUNK_NAMES:
                continue
            suffix = pure.suffix.lower()
            if is_archive(name):
                problems.append(
                    f"{name!r}: zips or archives inside the zip are not accepted; "
                    "put the images in the zip itself"
                )
            elif suffix in IMAGE_SUFFIXES:
                candidates[name] = info
            elif suffix == ".txt":
                texts[str(pure.with_suffix(""))] = info
            else:
                ignored.append(name)
        images: list[ZipImage] = []
        cap = limits.max_uncompressed_bytes
        bounds = limits.image_bounds()
        set_pixels = 0
        for name, info in candidates.items():
            try:
                width, height = _check_image(zf, info, limits, bounds)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, ValueError) else "it does not decode"
                problems.append(f"{name!r}: {reason}")
                continue
            set_pixels += width * height
            if set_pixels > limits.max_set_pixels:
                problems.append(
                    f"{name!r}: the images hold more than {limits.max_set_pixels // 1_000_000} "
                    "megapixels in all; send fewer or smaller images"
                )
                continue
            caption = None
            text_info = texts.pop(str(PurePosixPath(name).with_suffix("")), None)
            if text_info is not None:
                try:
                    caption = _read_capped(zf, text_info, cap).decode("utf-8").strip()
                except (ValueError, UnicodeDecodeError):
                    problems.append(f"{text_info.filename!r}: caption is not UTF-8 text")
                    continue
                if len(caption) > MAX_CAPTION_CHARS:
                    problems.append(
                        f"{text_info.filename!r}: caption longer than {MAX_CAPTION_CHARS} chars"
                    )
                    continue
            images.append(ZipImage(name, width, height, caption or None))
        ignored.extend(info.filename for info in texts.values())
        if len(images) < limits.min_images:
            problems.append(
                f"{len(images)} usable image(s) (jpg, png, webp); at least "
                f"{limits.min_images} are needed"
            )
        elif len(images) > limits.max_images:
            problems.append(f"{len(images)} images; at most {limits.max_images} are accepted")
    return ZipReport(tuple(images), tuple(sorted(ignored)), tuple(problems))


@dataclass(frozen=True)
class KeptReport:
    """A :class:`ZipReport` and the file it was made from, as the upload row keeps it.

    The file is known by its size and SHA-256, so the report describes the same bytes
    wherever they are read from (the data dir, or a copy downloaded from object storage),
    and bytes replaced since the inspection (an old upload, bytes that arrived another way)
    are not described by it.
    """

    report: ZipReport
    size: int
    sha256: str

    def describes(self, path: Path) -> bool:
        """True when ``path`` holds the bytes that were inspected (blocking: reads them)."""
        try:
            if path.stat().st_size != self.size:
                return False
            return _sha256(path) == self.sha256
        except OSError:
            return False

    def to_json(self) -> dict[str, Any]:
        """The JSON kept in ``uploads.inspection``."""
        return {"size": self.size, "sha256": self.sha256, "report": asdict(self.report)}

    @classmethod
    def from_json(cls, data: object) -> KeptReport | None:
        """The report kept on an upload row; ``None`` when there is none (or it is unreadable)."""
        if not isinstance(data, dict):
            return None
        try:
            report = data["report"]
            return cls(
                ZipReport(
                    tuple(ZipImage(**image) for image in report["images"]),
                    tuple(str(name) for name in report["ignored"]),
                    tuple(str(problem) for problem in report["problems"]),
                ),
                int(data["size"]),
                str(data["sha256"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def inspect(path: Path, limits: ZipLimits) -> KeptReport:
    """The one inspection of an uploaded zip: its report, bound to the file on disk.

    Blocking. Called once per upload, where its bytes complete (the engine's pre-signed
    PUT), or at first use for bytes no kept report describes
    (:func:`engine.image.service.start_training`).
    """
    return KeptReport(inspect_zip(path, limits), path.stat().st_size, _sha256(path))


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class InspectingCheck:
    """A storage check (:data:`engine.storage.Check`) that keeps the report it made."""

    def __init__(self, limits: ZipLimits) -> None:
        self.limits = limits
        self.kept: KeptReport | None = None

    def __call__(self, path: Path) -> str | None:
        """``None`` for a zip training may use, else every problem in one line."""
        self.kept = inspect(path, self.limits)
        return None if self.kept.report.ok else self.kept.report.summary()


def load_examples(
    path: Path,
    report: ZipReport,
    trigger_word: str,
    *,
    short_side: int | None = None,
    limits: ZipLimits | None = None,
) -> list[TrainImage]:
    """The images of a zip that passed, captioned ``"<trigger>, <caption>"``.

    Each is streamed from the zip and decoded with its short side brought down to
    ``short_side`` (the training resolution), so a set of large photos costs what the
    training needs, not what the camera took. The header bounds are checked again: the
    zip on disk is not trusted because an earlier check passed (:class:`ImageRefused`).
    """
    bounds = (limits or ZipLimits()).image_bounds()
    examples: list[TrainImage] = []
    with zipfile.ZipFile(path) as zf:
        for item in report.images:
            try:
                with zf.open(item.name) as fh, open_image(fh, IMAGE_FORMATS) as img:
                    check_header(img, bounds, short_side)
                    rgb = decode(img, short_side)
            except ImageRefused as exc:
                raise ImageRefused(f"the zip cannot be used: {item.name!r}: {exc}") from exc
            caption = f"{trigger_word}, {item.caption}" if item.caption else trigger_word
            examples.append(TrainImage(rgb, caption))
    return examples
