"""Checks on a training zip, and reading its images once it passed.

A member's zip is untrusted: entry paths may try to escape (``..``, absolute paths),
entries may be links, sizes may lie (zip bombs), images may not decode. Every problem is
collected, so the member fixes the zip once rather than once per problem. Blocking code:
call it in a thread or in the worker.
"""

from __future__ import annotations

import io
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from engine.image.settings import ZipLimits
from engine.image.types import TrainImage

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
IMAGE_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
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
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return True
    parts = name.replace("\\", "/").split("/")
    return any(part == ".." for part in parts)


def _is_link(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return stat.S_ISLNK(mode)


def _read_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """Read an entry, refusing more bytes than its header declares (lying headers)."""
    with zf.open(info) as fh:
        data = fh.read(min(info.file_size, cap) + 1)
    if len(data) > info.file_size or len(data) > cap:
        raise ValueError("it holds more data than its header declares")
    return data


def _check_image(data: bytes, limits: ZipLimits) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format
        img.verify()
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"it is {fmt or 'not an image'}, not jpg, png or webp")
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        width, height = img.size
    if min(width, height) < limits.min_side:
        raise ValueError(f"it is {width}x{height}; each side needs at least {limits.min_side} px")
    return width, height


def inspect_zip(path: Path, limits: ZipLimits) -> ZipReport:
    """Check a training zip against ``limits``; never raises for bad content."""
    problems: list[str] = []
    ignored: list[str] = []
    try:
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
            if suffix in IMAGE_SUFFIXES:
                candidates[name] = info
            elif suffix == ".txt":
                texts[str(pure.with_suffix(""))] = info
            else:
                ignored.append(name)
        images: list[ZipImage] = []
        cap = limits.max_uncompressed_bytes
        for name, info in candidates.items():
            try:
                width, height = _check_image(_read_capped(zf, info, cap), limits)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, ValueError) else "it does not decode"
                problems.append(f"{name!r}: {reason}")
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


def zip_problems(path: Path, limits: ZipLimits) -> str | None:
    """``None`` for a zip training may use, else every problem in one line (a 400's detail).

    The shape of a storage check: the pre-signed PUT runs it on the bytes before keeping them.
    """
    report = inspect_zip(path, limits)
    return None if report.ok else report.summary()


def load_examples(path: Path, report: ZipReport, trigger_word: str) -> list[TrainImage]:
    """The images of a zip that passed, captioned ``"<trigger>, <caption>"``."""
    examples: list[TrainImage] = []
    with zipfile.ZipFile(path) as zf:
        for item in report.images:
            with zf.open(item.name) as fh, Image.open(io.BytesIO(fh.read())) as img:
                rgb = img.convert("RGB")
            caption = f"{trigger_word}, {item.caption}" if item.caption else trigger_word
            examples.append(TrainImage(rgb, caption))
    return examples
