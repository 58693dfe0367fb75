"""Hostile zips and images of issue 24 (items 2 and 3), built without holding what they cost.

Zip directories whose ZIP64 and plain end records disagree (or whose plain record's fields
spell a signature), captions of hundreds of megabytes, images whose metadata blocks (PNG
private chunks, JPEG APP markers, WebP RIFF chunks) are hundreds of megabytes of zeros,
LA PNGs that Pillow stores at 4 bytes a pixel, progressive JPEGs that repeat a scan,
extreme aspect ratios. Written to files (streamed), so the test process never holds them.
:class:`TreePeak` measures the peak RSS growth and the CPU of this process and every
descendant (the confined decoders run in children of the forkserver).
"""

from __future__ import annotations

import io
import os
import struct
import threading
import time
import zipfile
import zlib
from pathlib import Path

import psutil
from PIL import Image

from tests.engine.image.zips import image_bytes

MiB = 1024 * 1024


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def good_entries(n: int = 4, size: int = 320) -> dict[str, bytes]:
    return {f"set/good{i}.png": image_bytes(i, size) for i in range(n)}


# -- zip directories ---------------------------------------------------------------------


def _central(name: bytes, offset: int, crc: int = 0, size: int = 0) -> bytes:
    return (
        struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            20,
            20,
            0,
            0,
            0,
            0,
            crc,
            size,
            size,
            len(name),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        + name
    )


def _good_part() -> tuple[bytes, bytes, int]:
    """A real zip of the good images: its local part, its central directory, its count."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in good_entries().items():
            zf.writestr(name, data)
    data = buf.getvalue()
    eocd = data.rfind(b"PK\x05\x06")
    count, cd_size, cd_offset = struct.unpack("<HII", data[eocd + 10 : eocd + 20])
    return data[:cd_offset], data[cd_offset : cd_offset + cd_size], count


def _many_records(count: int) -> bytes:
    """``count`` central records of empty stored entries (local header at offset 0)."""
    return b"".join(_central(f"e/{i}".encode(), 0) for i in range(count))


def zip64_disagreeing(count: int = 400_000) -> bytes:
    """The plain end record says 4 entries and a small directory; the ZIP64 record before
    the locator (the one Python's zipfile reads) says ``count + 4`` and the real size."""
    local, central, real = _good_part()
    directory = central + _many_records(count)
    cd_offset = len(local)
    zip64_at = cd_offset + len(directory)
    total = real + count
    record = struct.pack(
        "<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, total, total, len(directory), cd_offset
    )
    locator = struct.pack("<IIQI", 0x07064B50, 0, zip64_at, 1)
    plain = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, real, real, len(central), cd_offset, 0)
    return local + directory + record + locator + plain


def signature_in_fields(count: int = 400_000) -> bytes:
    """A plain end record whose offset field spells ``PK\\x05\\x06``: a search from the end
    finds that instead of the record; zipfile reads the record itself (and the offset
    mismatch is absorbed by its 'concatenated zip' correction)."""
    local, central, real = _good_part()
    directory = central + _many_records(count)
    plain = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, real, real, len(directory), 0x06054B50, 0)
    return local + directory + plain


# -- captions ----------------------------------------------------------------------------


def write_caption_zip(path: Path, caption_mib: int = 128) -> Path:
    """Good images, one caption of ``caption_mib`` MiB of text (compressing about 60:1),
    and a stored random pad that keeps the whole zip under the ratio bound."""
    line = b"a caption that goes on and on " * 4 + b"\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name, data in good_entries().items():
            zf.writestr(name, data)
        with zf.open("set/good0.txt", "w", force_zip64=True) as fh:
            block = line * (MiB // len(line))
            for _ in range(caption_mib):
                fh.write(block)
        zf.writestr("pad.bin", os.urandom(caption_mib * MiB // 50), zipfile.ZIP_STORED)
    return path


# -- metadata that costs more than the header says -------------------------------------


def _stream_entry(
    zf: zipfile.ZipFile, name: str, head: bytes, filler_bytes: int, tail: bytes
) -> None:
    with zf.open(name, "w", force_zip64=True) as fh:
        fh.write(head)
        block = b"\0" * MiB
        left = filler_bytes
        while left:
            n = min(left, MiB)
            fh.write(block[:n])
            left -= n
        fh.write(tail)


def _png_parts(size: int = 320) -> tuple[bytes, bytes]:
    """A real PNG split after its IHDR: (signature + IHDR, the rest)."""
    data = image_bytes(7, size)
    return data[:33], data[33:]


def _crc_zeros(kind: bytes, n: int) -> int:
    crc = zlib.crc32(kind)
    block = b"\0" * MiB
    while n:
        k = min(n, MiB)
        crc = zlib.crc32(block[:k], crc)
        n -= k
    return crc


def write_metadata_zip(path: Path, fmt: str, mib: int = 450) -> Path:
    """Good images plus one ``fmt`` image (png, jpg, webp) carrying ``mib`` MiB of zeros
    in metadata (a private PNG chunk, JPEG APP markers, an unknown WebP chunk), and a
    stored random pad so that the zip passes the ratio bound (a few MB in all)."""
    n = mib * MiB
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in good_entries().items():
            zf.writestr(name, data)
        if fmt == "png":
            head, rest = _png_parts()
            kind = b"prVt"
            chunk_head = head + struct.pack(">I", n) + kind
            chunk_tail = struct.pack(">I", _crc_zeros(kind, n)) + rest
            _stream_entry(zf, "set/meta.png", chunk_head, n, chunk_tail)
        elif fmt == "jpg":
            buf = io.BytesIO()
            Image.new("RGB", (320, 320), (9, 99, 199)).save(buf, "JPEG")
            data = buf.getvalue()
            segment = b"\xff\xe9" + struct.pack(">H", 65535) + b"\0" * 65533
            with zf.open("set/meta.jpg", "w", force_zip64=True) as fh:
                fh.write(data[:2])
                for _ in range(n // len(segment)):
                    fh.write(segment)
                fh.write(data[2:])
        elif fmt == "webp":
            buf = io.BytesIO()
            Image.new("RGB", (320, 320), (9, 99, 199)).save(buf, "WEBP", lossless=True)
            data = buf.getvalue()
            # RIFF size covers the unknown chunk: the decoder must walk past it.
            body = data[12:]
            riff = b"RIFF" + struct.pack("<I", 4 + 8 + n + len(body)) + b"WEBP"
            _stream_entry(zf, "set/meta.webp", riff + b"ZZZZ" + struct.pack("<I", n), n, body)
        else:
            raise ValueError(fmt)
        zf.writestr("pad.bin", os.urandom(n // 80), zipfile.ZIP_STORED)
    return path


# -- images ------------------------------------------------------------------------------


def _blank_rows(width: int, height: int, bpp: int) -> bytes:
    comp = zlib.compressobj(9)
    row = b"\0" * (width * bpp + 1)
    return b"".join([comp.compress(row) for _ in range(height)] + [comp.flush()])


def la_png(side: int = 7000) -> bytes:
    """A real ``side`` x ``side`` grey+alpha PNG: 2 bytes a pixel in the file, 4 in Pillow."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 4, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", _blank_rows(side, side, 2))
        + _chunk(b"IEND", b"")
    )


def wide_png(width: int = 195_312, height: int = 256) -> bytes:
    """A grey PNG of an extreme aspect ratio (50 megapixels: at the pixel bound)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", _blank_rows(width, height, 1))
        + _chunk(b"IEND", b"")
    )


def repeated_scans_jpeg(side: int = 7000, repeats: int = 90) -> bytes:
    """A progressive JPEG that repeats one small AC scan ``repeats`` times: ~200 KB that
    libjpeg walks over every block of, once per scan (7000 px: ~40 ms of CPU a scan)."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    sos = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]
    eoi = data.rfind(b"\xff\xd9")
    ends = [*sos, eoi]
    scans = [data[ends[k] : ends[k + 1]] for k in range(len(sos))]
    small = min(scans[1:], key=len)
    return data[:eoi] + small * repeats + b"\xff\xd9"


def truncated_png(i: int) -> bytes:
    """A PNG whose pixel data stops early: refused only when decoded."""
    data = image_bytes(i, 320)
    at = data.find(b"IDAT")
    return data[: at + 40]


def zip_file(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


# -- measuring ---------------------------------------------------------------------------


def _tree() -> list[psutil.Process]:
    me = psutil.Process()
    try:
        return [me, *me.children(recursive=True)]
    except psutil.Error:
        return [me]


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


class TreePeak:
    """Peak RSS growth (MB) and CPU seconds of this process and all its descendants.

    A sampler thread sums the tree's RSS every 5 ms; CPU counts each process and the
    children it reaped (the forkserver reaps the confined decoders), sampled at the end
    and while running (a decoder that was killed is counted by its reaper)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        procs = _tree()
        self.baseline = sum(_rss(p) for p in procs)
        self.cpu_start = _cpu(procs)
        self.peak = self.baseline
        self.cpu_seen: dict[int, float] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreePeak:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.done.is_set():
            procs = _tree()
            self.peak = max(self.peak, sum(_rss(p) for p in procs))
            for p in procs[1:]:
                try:
                    t = p.cpu_times()
                    self.cpu_seen[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.seconds = time.monotonic() - self.started
        self.growth_mb = max(0, self.peak - self.baseline) / MiB
        procs = _tree()
        live = {p.pid for p in procs}
        # Children that ended and were reaped show in their parent's children_* times;
        # the ones still alive in their own. Take the larger of the two views.
        reaped = _cpu(procs) - self.cpu_start
        sampled = sum(v for pid, v in self.cpu_seen.items() if pid not in live)
        self.cpu = max(reaped, sampled)


def _rss(p: psutil.Process) -> int:
    try:
        return int(p.memory_info().rss)
    except psutil.Error:
        return 0
