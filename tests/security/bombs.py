"""Decompression bombs, built without ever holding their decoded pixels.

Images are written by hand (PNG chunks, patched JPEG/WebP/GIF headers) so that a
13000x13000 picture costs kilobytes to make; zips come in every shape a bomb takes:
huge images, animations, many entries, zips in zips, sizes that lie. Used by the
security tests and by ``bench/hostile.py``, which measures the memory each one costs.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from functools import cache

from PIL import Image

from tests.engine.image.zips import image_bytes


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@cache
def _blank_rows(width: int, height: int, bpp: int) -> bytes:
    comp = zlib.compressobj(9)
    row = b"\0" * (width * bpp + 1)  # filter byte 0, then zeros
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    return b"".join(parts)


def palette_png(side: int = 13000, seed: int = 0) -> bytes:
    """A ``side`` x ``side`` palette PNG of one colour: ~side*side bytes once decoded."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 3, 0, 0, 0)
    plte = bytes([seed % 256, 80, 160])
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"PLTE", plte)
        + _chunk(b"IDAT", _blank_rows(side, side, 1))
        + _chunk(b"IEND", b"")
    )


def blank_png(side: int, *, alpha: bool) -> bytes:
    """A real ``side`` x ``side`` RGB or RGBA PNG (black): 3 or 4 bytes a pixel decoded."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 6 if alpha else 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", _blank_rows(side, side, 4 if alpha else 3))
        + _chunk(b"IEND", b"")
    )


def rgba_png_header_only(width: int, height: int) -> bytes:
    """An RGBA PNG that declares ``width`` x ``height`` but holds one row (truncated data)."""
    comp = zlib.compress(b"\0" * (width * 4 + 1))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", comp) + _chunk(b"IEND", b"")
    )


def apng(frames: int, side: int = 512) -> bytes:
    """An animated PNG that declares ``frames`` frames (only the first one is present)."""
    base = palette_png(side)
    actl = _chunk(b"acTL", struct.pack(">II", frames, 0))
    fctl = _chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, side, side, 0, 0, 1, 10, 0, 0))
    ihdr_end = 8 + 25
    return base[:ihdr_end] + actl + fctl + base[ihdr_end:]


def jpeg_declaring(width: int, height: int, *, progressive: bool = False) -> bytes:
    """A small real JPEG whose frame header claims ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (90, 120, 200)).save(buf, "JPEG", progressive=progressive)
    data = bytearray(buf.getvalue())
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            data[at + 5 : at + 9] = struct.pack(">HH", height, width)
            break
    return bytes(data)


@cache
def big_jpeg(side: int = 7000, *, progressive: bool = False) -> bytes:
    """A real ``side`` x ``side`` JPEG (grey, so it compresses to little)."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).convert("RGB").save(
        buf, "JPEG", quality=90, progressive=progressive
    )
    return buf.getvalue()


def webp_declaring(width: int, height: int) -> bytes:
    """A lossless WebP whose VP8L header claims ``width`` x ``height`` (at most 16384)."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 90)).save(buf, "WEBP", lossless=True)
    data = bytearray(buf.getvalue())
    at = data.find(b"VP8L")
    assert at >= 0
    bits = int.from_bytes(data[at + 9 : at + 13], "little")
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    data[at + 9 : at + 13] = bits.to_bytes(4, "little")
    return bytes(data)


@cache
def big_webp(side: int = 6000) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (10, 200, 90)).save(buf, "WEBP", quality=50)
    return buf.getvalue()


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF whose screen and first frame claim ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.new("P", (64, 64), 1).save(buf, "GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", width, height)
    at = data.find(b"\x2c")  # image descriptor
    data[at + 5 : at + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def animated_gif(frames: int = 500, side: int = 400) -> bytes:
    images = [Image.new("RGB", (side, side), (i * 5, 255 - i * 5, 90)) for i in range(50)]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:] * (frames // 50), loop=0)
    return buf.getvalue()


@cache
def animated_webp(frames: int = 60, side: int = 512) -> bytes:
    images = [Image.new("RGB", (side, side), (i * 4, 255 - i * 4, 0)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(
        buf,
        "WEBP",
        save_all=True,
        append_images=images[1:],
        quality=10,
        minimize_size=False,
        allow_mixed=False,
    )
    return buf.getvalue()


def good_images(n: int = 4, size: int = 320) -> dict[str, bytes]:
    return {f"set/good{i}.png": image_bytes(i, size) for i in range(n)}


def zip_of(entries: dict[str, bytes], *, stored: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in entries.items():
            zf.writestr(name, data, compress_type=zipfile.ZIP_STORED if name in stored else None)
    return buf.getvalue()


def zeros_entry_zip(mib: int = 1024) -> bytes:
    """One image-named entry of ``mib`` MiB of zeros (~1 MB packed per GB)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in good_images().items():
            zf.writestr(name, data)
        with zf.open("set/zeros.png", "w", force_zip64=True) as fh:
            block = b"\0" * (1024 * 1024)
            for _ in range(mib):
                fh.write(block)
    return buf.getvalue()


def lying_size_zip(real_mib: int = 256) -> bytes:
    """An entry whose central directory declares 1 KiB but that inflates to ``real_mib`` MiB."""
    data = bytearray(zeros_entry_zip(real_mib))
    name = b"set/zeros.png"
    cd = data.find(b"PK\x01\x02")
    while bytes(data[cd + 46 : cd + 46 + len(name)]) != name:
        cd = data.find(b"PK\x01\x02", cd + 4)
    if data[cd + 24 : cd + 28] != b"\xff\xff\xff\xff":
        data[cd + 24 : cd + 28] = struct.pack("<I", 1024)
    else:  # zip64: the sizes live in the extra field, uncompressed first
        extra = cd + 46 + int.from_bytes(data[cd + 28 : cd + 30], "little")
        end = extra + int.from_bytes(data[cd + 30 : cd + 32], "little")
        while extra < end:
            tag, size = struct.unpack("<HH", data[extra : extra + 4])
            if tag == 0x0001:
                data[extra + 4 : extra + 12] = struct.pack("<Q", 1024)
                break
            extra += 4 + size
    return bytes(data)


def many_entries_zip(count: int = 200_000) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in good_images().items():
            zf.writestr(name, data)
        for i in range(count):
            zf.writestr(f"e/{i}", b"")
    return buf.getvalue()


def nested_zip(depth: int = 5, width: int = 10) -> bytes:
    """Zips in zips (42.zip's shape): each level holds ``width`` copies of the one below."""
    inner = zeros_entry_zip(64)
    for _ in range(depth):
        inner = zip_of({f"layer{i}.zip": inner for i in range(width)})
    return zip_of({**good_images(), "set/more.zip": inner})


def deep_paths_zip(depth: int = 2000) -> bytes:
    return zip_of({**good_images(), "a/" * depth + "x.png": image_bytes(9, 320)})


def six_palette_bombs_zip() -> bytes:
    """The good set plus six 13000x13000 palette PNGs, ``set/bomb0.png`` to ``bomb5.png``
    (the first bomb reported; kilobytes zipped, 1 GB decoded)."""
    return zip_of(
        {**good_images(), **{f"set/bomb{i}.png": palette_png(13000, i) for i in range(6)}}
    )


def bomb_zips() -> dict[str, tuple[str, bytes]]:
    """name -> (family, zip bytes), each a good set plus one bomb (or a bomb as a whole)."""
    good = good_images()
    return {
        "six 13000x13000 palette PNGs": ("huge image", six_palette_bombs_zip()),
        "palette PNG 9000x9000": ("huge image", zip_of({**good, "set/b.png": palette_png(9000)})),
        "RGB PNG 7000x7000 (accepted, at the pixel bound)": (
            "huge image",
            zip_of({**good, "set/b.png": blank_png(7000, alpha=False)}),
        ),
        "RGBA PNG 6800x6800": (
            "huge image",
            zip_of({**good, "set/b.png": blank_png(6800, alpha=True)}),
        ),
        "RGBA PNG 4800x4800 (accepted, at the decode bound)": (
            "huge image",
            zip_of({**good, "set/b.png": blank_png(4800, alpha=True)}),
        ),
        "RGBA PNG declaring 30000x30000": (
            "huge image",
            zip_of({**good, "set/b.png": rgba_png_header_only(30000, 30000)}),
        ),
        "JPEG declaring 60000x60000": (
            "large JPEG/WebP/GIF",
            zip_of({**good, "set/b.jpg": jpeg_declaring(60000, 60000)}),
        ),
        "real JPEG 7000x7000": ("large JPEG/WebP/GIF", zip_of({**good, "set/b.jpg": big_jpeg()})),
        "progressive JPEG 7000x7000": (
            "large JPEG/WebP/GIF",
            zip_of({**good, "set/b.jpg": big_jpeg(progressive=True)}),
        ),
        "WebP declaring 16384x16384": (
            "large JPEG/WebP/GIF",
            zip_of({**good, "set/b.webp": webp_declaring(16384, 16384)}),
        ),
        "real WebP 6000x6000": ("large JPEG/WebP/GIF", zip_of({**good, "set/b.webp": big_webp()})),
        "GIF declaring 65535x65535": (
            "large JPEG/WebP/GIF",
            zip_of({**good, "set/b.gif": gif_declaring(65535, 65535)}),
        ),
        "APNG declaring 1000000 frames": (
            "animated",
            zip_of({**good, "set/b.png": apng(1_000_000)}),
        ),
        "animated GIF (~500 frames)": ("animated", zip_of({**good, "set/b.gif": animated_gif()})),
        "animated WebP": ("animated", zip_of({**good, "set/b.webp": animated_webp()})),
        "1 GiB of zeros in one entry": ("zip bomb", zeros_entry_zip(1024)),
        "200000 entries": ("many entries", many_entries_zip()),
        "zips in zips (5 deep, 10 wide)": ("deep nesting", nested_zip()),
        "2000-deep directories": ("deep nesting", deep_paths_zip()),
        "entry declaring 1 KiB, inflating to 256 MiB": ("lying sizes", lying_size_zip()),
    }
