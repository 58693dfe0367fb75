"""Fuzzing the readers of members' zips and images (issue 24): mutated zip end records and
central directories, mutated PNG/JPEG/WebP/GIF headers, through the engine's zip check
and the bot's image-set build (every read confined, :mod:`engine.confine`).

The invariant, per input: a typed refusal (a problem in the engine's report; the bot's
:class:`MediaRejected` or a left-out image) or a bounded success; never another
exception; the process tree's peak RSS growth under 300 MB and its CPU under 20 s.

Bounded for CI: ``TADA_FUZZ_EXAMPLES`` examples a family (default 12), derandomized (the
same inputs every run); ``TADA_FUZZ_REPORT=path`` writes the per-family counts and the
worst RSS and CPU as JSON (they are printed with ``-s`` too).
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bot.media import ImageSet, MediaRejected, build_image_set
from bot.media import inspect_zip as bot_inspect_zip
from engine.image.settings import ZipLimits
from engine.image.zipcheck import ZipReport, inspect_zip
from tests.engine.image.zips import image_bytes
from tests.security import image_hostile as hostile

pytestmark = pytest.mark.no_database

EXAMPLES = int(os.environ.get("TADA_FUZZ_EXAMPLES", "12"))
MAX_RSS_MB = 300.0
MAX_CPU_S = 20.0
LIMITS = ZipLimits(min_side=32, min_images=1)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

STATS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    inspect_zip(
        hostile.zip_file(Path(tempfile.mkdtemp()) / "w.zip", {"a.png": image_bytes(1)}), LIMITS
    )
    yield
    text = json.dumps(STATS, indent=2, sort_keys=True)
    print(f"\nfuzz (per family: tried, held, worst RSS growth MB, worst CPU s):\n{text}")
    if path := os.environ.get("TADA_FUZZ_REPORT"):
        Path(path).write_text(text + "\n")


def _measured(family: str, run: Callable[[], None]) -> None:
    stats = STATS.setdefault(
        family, {"tried": 0, "held": 0, "worst_rss_mb": 0.0, "worst_cpu_s": 0.0}
    )
    stats["tried"] += 1
    with hostile.TreePeak() as got:
        run()
    stats["worst_rss_mb"] = round(max(stats["worst_rss_mb"], got.growth_mb), 1)
    stats["worst_cpu_s"] = round(max(stats["worst_cpu_s"], got.cpu), 2)
    assert got.growth_mb < MAX_RSS_MB, (family, got.growth_mb)
    assert got.cpu < MAX_CPU_S, (family, got.cpu)
    stats["held"] += 1


# -- mutations ---------------------------------------------------------------------------

INTERESTING = [0, 1, 2, 0x7F, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1]
SIGNATURES = [b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07", b"PK\x01\x02", b"PK\x03\x04"]


@st.composite
def mutations(draw: Any, span: int) -> list[tuple[int, bytes]]:
    """Up to four edits, each at an offset (from the region's start) below ``span``."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, span - 1)))
        kind = draw(st.sampled_from(["int", "byte", "signature", "bytes"]))
        if kind == "int":
            width = draw(st.sampled_from([2, 4, 8]))
            value = draw(st.sampled_from(INTERESTING) | st.integers(0, (1 << (8 * width)) - 1))
            order = draw(st.sampled_from(["<", ">"]))
            fmt = {2: "H", 4: "I", 8: "Q"}[width]
            edits.append((at, struct.pack(order + fmt, value % (1 << (8 * width)))))
        elif kind == "byte":
            edits.append((at, bytes([draw(st.integers(0, 255))])))
        elif kind == "signature":
            edits.append((at, draw(st.sampled_from(SIGNATURES))))
        else:
            edits.append((at, draw(st.binary(min_size=1, max_size=16))))
    return edits


def _apply(data: bytes, start: int, edits: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(data)
    for at, patch in edits:
        pos = start + at
        out[pos : pos + len(patch)] = patch
    return bytes(out[: len(data)]) if len(out) > len(data) else bytes(out)


# -- zip directories ---------------------------------------------------------------------


def _zip_bases() -> dict[str, bytes]:
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("set/a.png", image_bytes(1, 64))
        zf.writestr("set/a.txt", "a caption")
        zf.writestr("set/b.jpg", image_bytes(2, 64, "JPEG"))
    return {"plain": plain.getvalue(), "zip64": hostile.zip64_disagreeing(0)}


ZIP_BASES = _zip_bases()


def _zip_region(data: bytes) -> int:
    """Where the central directory starts: everything from there to the end is mutated."""
    return data.find(b"PK\x01\x02")


def _check_zip(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.zip"
        path.write_bytes(data)
        report = inspect_zip(path, LIMITS)
    assert isinstance(report, ZipReport)
    try:
        got = bot_inspect_zip(data, min_side=32)
    except MediaRejected:
        return
    assert isinstance(got, ImageSet) and got.kept


@pytest.mark.parametrize("base", list(ZIP_BASES))
def test_mutated_zip_directories_are_refused_or_read_within_bounds(base: str) -> None:
    data = ZIP_BASES[base]
    start = _zip_region(data)

    @FUZZ
    @given(mutations(len(data) - start))
    def run(edits: list[tuple[int, bytes]]) -> None:
        mutated = _apply(data, start, edits)
        _measured(f"zip directory ({base})", lambda: _check_zip(mutated))

    run()


# -- image headers -----------------------------------------------------------------------


def _image_bases() -> dict[str, tuple[str, bytes, int]]:
    """format -> (file name, bytes, how many leading bytes hold its headers)."""
    img = Image.new("RGB", (320, 320), (40, 90, 160))
    out: dict[str, tuple[str, bytes, int]] = {}
    for fmt, name, kw in (
        ("PNG", "a.png", {}),
        ("JPEG", "a.jpg", {"quality": 80}),
        ("JPEG", "p.jpg", {"progressive": True}),
        ("WEBP", "a.webp", {"lossless": True}),
        ("WEBP", "l.webp", {"quality": 60}),
        ("GIF", "a.gif", {}),
    ):
        buf = io.BytesIO()
        (img.convert("P") if fmt == "GIF" else img).save(buf, fmt, **kw)
        data = buf.getvalue()
        header = {"PNG": 64, "JPEG": data.find(b"\xff\xda") + 12, "WEBP": 40, "GIF": 48}[fmt]
        out[name] = (name, data, min(header, len(data)))
    return out


IMAGE_BASES = _image_bases()


def _check_image(name: str, data: bytes) -> None:
    try:
        got = build_image_set([(name, data)], min_side=32)
    except MediaRejected:
        pass
    else:
        assert [*got.kept, *(r.name for r in got.refused)] == [name]
    with tempfile.TemporaryDirectory() as tmp:
        path = hostile.zip_file(Path(tmp) / "f.zip", {f"set/{name}": data})
        report = inspect_zip(path, LIMITS)
    assert isinstance(report, ZipReport)
    assert report.ok or report.problems


@pytest.mark.parametrize("base", list(IMAGE_BASES))
def test_mutated_image_headers_are_refused_or_decoded_within_bounds(base: str) -> None:
    name, data, span = IMAGE_BASES[base]

    @FUZZ
    @given(mutations(span))
    def run(edits: list[tuple[int, bytes]]) -> None:
        mutated = _apply(data, 0, edits)
        _measured(f"image header ({base})", lambda: _check_image(name, mutated))

    run()
