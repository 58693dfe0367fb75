"""Checks on a training zip, and reading its images once it passed.

A member's zip is untrusted: entry paths may try to escape (``..``, absolute paths),
entries may be links, sizes may lie (zip bombs), the directory may hold millions of
entries, zips may nest, images may declare more pixels than memory holds or not decode.
What the zip and each image declare is checked before anything is read, images are
streamed from the zip and decoded at the size they are needed at
(:mod:`engine.image.untrusted`), each read in a confined child process. Problems are
collected, so the member fixes the zip once rather than once per problem; a step that
refuses (too many entries or images, too many pixels in all) stops before the next one
reads anything. Blocking code: call it in a thread or in the worker.
"""

from __future__ import annotations

import hashlib
import stat
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from engine.image.settings import ZipLimits
from engine.image.types import TrainImage
from engine.image.untrusted import (
    LISTING_LIMITS,
    ImageHeader,
    ImageRefused,
    Source,
    ZipEntry,
    confined,
    decode_image,
    is_archive,
    is_unsafe_path,
    list_zip,
    probe_image,
    read_texts,
)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
IMAGE_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
# Formats recognised only to name them in a refusal (never decoded).
_NAMED_FORMATS = IMAGE_FORMATS | {"GIF", "BMP", "TIFF"}
# A central directory bigger than this is not a set of images (names of 4 KiB each).
_DIRECTORY_BYTES_PER_ENTRY = 4096
MAX_CAPTION_CHARS = 1000
# A caption is read no further than this (UTF-8 takes at most 4 bytes a character; some
# room for the blank lines and spaces that are stripped).
MAX_CAPTION_BYTES = 4 * MAX_CAPTION_CHARS + 1024
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


def _is_link(entry: ZipEntry) -> bool:
    mode = entry.external_attr >> 16
    return stat.S_ISLNK(mode)


def inspect_zip(path: Path, limits: ZipLimits) -> ZipReport:
    """Check a training zip against ``limits``; never raises for bad content.

    In this order, each step refusing before the next costs anything: the directory
    (listed in a confined child: its end records read as zipfile reads them), what the
    entries declare (sizes, ratio, paths, links, how many images), what each image's
    header declares (one confined child each: pixels, frames, decode cost, metadata, and
    the pixels of the set), then each image decoded (one confined child each, under the
    OS limits of :meth:`ImageBounds.limits`), then the captions (read to a bound).
    """
    problems: list[str] = []
    ignored: list[str] = []
    try:
        entries = confined(
            list_zip,
            str(path),
            limits.max_entries,
            limits.max_entries * _DIRECTORY_BYTES_PER_ENTRY,
            limits=LISTING_LIMITS,
        )
    except ImageRefused as exc:
        return ZipReport((), (), (str(exc),))
    declared = sum(i.file_size for i in entries)
    packed = sum(i.compress_size for i in entries)
    if declared > limits.max_uncompressed_bytes:
        problems.append(
            f"it unpacks to {declared} bytes; at most {limits.max_uncompressed_bytes} are accepted"
        )
    if declared > _RATIO_FLOOR_BYTES and declared > packed * limits.max_compression_ratio:
        problems.append(
            f"compression ratio {declared / max(packed, 1):.0f}:1 is above "
            f"{limits.max_compression_ratio:.0f}:1 (zip bomb?)"
        )
    if problems:
        # Reading entries of a suspected bomb is exactly what it wants; stop here.
        return ZipReport((), (), tuple(problems))
    candidates: dict[str, ZipEntry] = {}
    texts: dict[str, ZipEntry] = {}
    for info in entries:
        name = info.name
        if _unsafe_path(name):
            problems.append(f"{name!r}: unsafe path (absolute or '..')")
            continue
        if _is_link(info):
            problems.append(f"{name!r}: links are not accepted")
            continue
        if info.is_dir:
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
    if len(candidates) > limits.max_images:
        # Counted from the directory: not one of them is read.
        problems.append(f"{len(candidates)} images; at most {limits.max_images} are accepted")
        return ZipReport((), (), tuple(problems))
    bounds = limits.image_bounds()
    image_limits = bounds.limits()
    headers: dict[str, ImageHeader] = {}
    for name in candidates:
        try:
            headers[name] = confined(
                probe_image,
                Source(str(path), name),
                _NAMED_FORMATS,
                IMAGE_FORMATS,
                bounds,
                limits.min_side,
                limits.min_side,
                limits=image_limits,
            )
        except ImageRefused as exc:
            problems.append(f"{name!r}: {exc}")
    set_pixels = 0
    for name, header in headers.items():
        set_pixels += header.pixels
        if set_pixels > limits.max_set_pixels:
            problems.append(
                f"{name!r}: the images hold more than {limits.max_set_pixels // 1_000_000} "
                "megapixels in all; send fewer or smaller images"
            )
    if set_pixels > limits.max_set_pixels:
        return ZipReport((), tuple(sorted(ignored)), tuple(problems))
    passed: list[str] = []
    for name in headers:
        try:
            confined(
                decode_image,
                Source(str(path), name),
                IMAGE_FORMATS,
                bounds,
                limits.min_side,
                False,
                False,
                limits=image_limits,
            )
        except ImageRefused as exc:
            problems.append(f"{name!r}: {exc}")
            continue
        passed.append(name)
    captions = _captions(path, passed, texts)
    images: list[ZipImage] = []
    for name in passed:
        header = headers[name]
        text_info = texts.pop(str(PurePosixPath(name).with_suffix("")), None)
        caption: str | None = None
        if text_info is not None:
            raw = captions.get(text_info.name)
            if raw is None:
                problems.append(
                    f"{text_info.name!r}: caption longer than {MAX_CAPTION_CHARS} chars"
                )
                continue
            try:
                caption = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                problems.append(f"{text_info.name!r}: caption is not UTF-8 text")
                continue
            if len(caption) > MAX_CAPTION_CHARS:
                problems.append(
                    f"{text_info.name!r}: caption longer than {MAX_CAPTION_CHARS} chars"
                )
                continue
        images.append(ZipImage(name, header.width, header.height, caption or None))
    ignored.extend(info.name for info in texts.values())
    if len(images) < limits.min_images:
        problems.append(
            f"{len(images)} usable image(s) (jpg, png, webp); at least "
            f"{limits.min_images} are needed"
        )
    return ZipReport(tuple(images), tuple(sorted(ignored)), tuple(problems))


def _captions(path: Path, names: list[str], texts: dict[str, ZipEntry]) -> dict[str, bytes | None]:
    """The caption files of ``names``, each read to at most :data:`MAX_CAPTION_BYTES`
    (+1: longer is refused), in one confined child."""
    members = tuple(
        texts[key].name
        for name in names
        if (key := str(PurePosixPath(name).with_suffix(""))) in texts
    )
    if not members:
        return {}
    try:
        return confined(read_texts, str(path), members, MAX_CAPTION_BYTES, limits=LISTING_LIMITS)
    except ImageRefused:
        return dict.fromkeys(members)


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
    for item in report.images:
        try:
            rgb = confined(
                decode_image,
                Source(str(path), item.name),
                IMAGE_FORMATS,
                bounds,
                short_side,
                True,
                True,
                limits=bounds.limits(),
            )
        except ImageRefused as exc:
            raise ImageRefused(f"the zip cannot be used: {item.name!r}: {exc}") from exc
        assert rgb is not None
        caption = f"{trigger_word}, {item.caption}" if item.caption else trigger_word
        examples.append(TrainImage(rgb, caption))
    return examples
