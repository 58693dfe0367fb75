"""Hostile "recordings" for the decoder tests: scripts, playlists, manifests, images, refs.

Each is what ffmpeg, left to probe the content, would treat as something other than one
self-contained recording: files that name other files or URLs, or formats we do not take.
Shared by the engine's and the bot's tests (tests/security/test_decoders.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from PIL import Image

from engine.voice.audio import ffmpeg_exe

MiB = 1024 * 1024


def ffconcat(*names: str) -> bytes:
    """An ffconcat script naming ``names`` (relative: resolved next to the script)."""
    return ("ffconcat version 1.0\n" + "".join(f"file {n}\n" for n in names)).encode()


def hls(url: str) -> bytes:
    """An HLS playlist with one segment at ``url``."""
    return (
        f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:60\n#EXTINF:30,\n{url}\n#EXT-X-ENDLIST\n"
    ).encode()


def dash(url: str) -> bytes:
    """A DASH manifest whose one audio segment is ``url`` (a ``file://`` URL reads a local file)."""
    return f"""<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT30S"
     minBufferTime="PT1S" profiles="urn:mpeg:dash:profile:full:2011">
<Period duration="PT30S"><AdaptationSet mimeType="audio/mp4">
<Representation id="1" bandwidth="128000" codecs="mp4a.40.2" audioSamplingRate="22050">
<SegmentList duration="30"><SegmentURL media="{url}"/></SegmentList>
</Representation></AdaptationSet></Period></MPD>
""".encode()


def sdp() -> bytes:
    """An SDP description: ffmpeg would listen for RTP on the network."""
    return (
        b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=audio 5004 RTP/AVP 0\r\n"
    )


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buf, "JPEG")
    return buf.getvalue()


def transcode(wav: bytes, fmt: str, tmp: Path, *args: str) -> bytes:
    """``wav`` re-encoded by the bundled ffmpeg into container ``fmt`` (ffmpeg's muxer name)."""
    src, dst = tmp / "src.wav", tmp / f"out.{fmt}"
    src.write_bytes(wav)
    subprocess.run(
        [ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), *args, "-f", fmt, str(dst)],
        check=True,
        capture_output=True,
    )
    return dst.read_bytes()


def _grow_boxes(data: bytearray, start: int, end: int, at: int, delta: int) -> None:
    """Add ``delta`` to the size of every box in ``data[start:end]`` that holds offset ``at``."""
    pos = start
    while pos + 8 <= end:
        size = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = bytes(data[pos + 4 : pos + 8])
        if pos < at < pos + size:
            data[pos : pos + 4] = struct.pack(">I", size + delta)
            child = pos + 8 + (4 if kind == b"meta" else 0)
            if kind in (b"moov", b"trak", b"mdia", b"minf", b"dinf", b"meta"):
                _grow_boxes(data, child, pos + size, at, delta)
            return
        pos += size


def external_dref(m4a: bytes, url: str) -> bytes:
    """``m4a`` with its data reference changed to "the media is in ``url``" (not this file)."""
    data = bytearray(m4a)
    at = data.index(b"dref") - 4
    entry = at + 16  # dref header (8), version/flags (4), entry count (4)
    size, kind = struct.unpack(">I4s", data[entry : entry + 8])
    assert kind == b"url " and size == 12, (kind, size)
    location = url.encode() + b"\0"
    new_entry = struct.pack(">I4sI", 12 + len(location), b"url ", 0) + location
    data[entry : entry + 12] = new_entry
    _grow_boxes(data, 0, len(data) - len(location), at + 4, len(location))
    return bytes(data)


# -- headers that lie: a few kilobytes declaring a huge rate, many channels or zeros --------


def wav_declaring(
    rate: int, channels: int = 1, bits: int = 16, data_bytes: int = 40_000, fmt_tag: int = 1
) -> bytes:
    """A PCM WAV whose ``fmt `` chunk declares ``rate``, ``channels`` and ``bits`` (any
    values, zeros included), followed by ``data_bytes`` of a quiet tone's bytes."""
    block = channels * bits // 8
    fmt = struct.pack(
        "<HHIIHH", fmt_tag, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits
    )
    data = (struct.pack("<hh", 900, -900) * (data_bytes // 4 + 1))[:data_bytes]
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


PCM_MKV = ("-c:a", "pcm_s16le", "-f", "matroska")


def matroska_declaring(rate: float, tmp: Path, seconds: float = 1.0) -> bytes:
    """A small PCM Matroska file (about 32 KB a second) whose audio track declares ``rate``.

    Made by the bundled ffmpeg at 16 kHz, then its ``SamplingFrequency`` element (0xB5, a
    float) rewritten: the demuxer believes the element, the samples stay the same bytes.
    """
    src = tmp / "mkv-src.wav"
    n = int(16000 * seconds)
    src.write_bytes(wav_declaring(16000, 1, 16, data_bytes=2 * n))
    dst = tmp / "declaring.mka"
    subprocess.run(
        [ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), *PCM_MKV, str(dst)],
        check=True,
        capture_output=True,
    )
    data = bytearray(dst.read_bytes())
    for size, packed in ((8, struct.pack(">d", 16000.0)), (4, struct.pack(">f", 16000.0))):
        marker = bytes([0xB5, 0x80 | size]) + packed
        at = data.find(marker)
        if at >= 0:
            new = struct.pack(">d", rate) if size == 8 else struct.pack(">f", rate)
            data[at + 2 : at + 2 + size] = new
            return bytes(data)
    raise AssertionError("no SamplingFrequency element of 16000 in ffmpeg's Matroska file")


def matroska_padded(data: bytes, voids: int) -> bytes:
    """``data`` (a Matroska file) with ``voids`` empty Void elements at the start of its
    Segment: what a reader walking a bounded number of elements gives up on, and ffmpeg
    skips."""
    at = data.index(b"\x18\x53\x80\x67") + 4
    length = 9 - data[at].bit_length()
    size = int.from_bytes(data[at : at + length], "big") & ((1 << (7 * length)) - 1)
    if size == (1 << (7 * length)) - 1:  # unknown size: nothing to grow
        new_size = data[at : at + length]
    else:
        new_size = ((size + 2 * voids) | (1 << (7 * length))).to_bytes(length, "big")
    return data[:at] + new_size + b"\xec\x80" * voids + data[at + length :]


def _ebml(element_id: bytes, body: bytes) -> bytes:
    return element_id + (len(body) | (1 << 56)).to_bytes(8, "big") + body


def matroska_many_fields(n: int) -> bytes:
    """A Matroska header whose audio track's Audio element holds ``n`` empty fields."""
    audio = _ebml(b"\xe1", b"\xbf\x80" * n)
    tracks = _ebml(b"\x16\x54\xae\x6b", _ebml(b"\xae", audio))
    return b"\x1a\x45\xdf\xa3\x80" + _ebml(b"\x18\x53\x80\x67", tracks)


def matroska_channels(channels: int, tmp: Path) -> bytes:
    """A small PCM Matroska file whose audio track declares ``channels`` (0x9F, one byte)."""
    data = bytearray(matroska_declaring(16000.0, tmp))
    at = data.index(b"\x9f\x81\x01")
    data[at + 2] = channels
    return bytes(data)


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _utf8_number(n: int) -> bytes:
    """FLAC's "UTF-8" coding of a frame number (up to 2^21 here)."""
    if n < 0x80:
        return bytes([n])
    if n < 0x800:
        return bytes([0xC0 | n >> 6, 0x80 | n & 0x3F])
    if n < 0x10000:
        return bytes([0xE0 | n >> 12, 0x80 | (n >> 6) & 0x3F, 0x80 | n & 0x3F])
    return bytes([0xF0 | n >> 18, 0x80 | (n >> 12) & 0x3F, 0x80 | (n >> 6) & 0x3F, 0x80 | n & 0x3F])


def flac_declaring(
    rate: int,
    channels: int = 2,
    seconds: float = 120.0,
    bits: int = 16,
    value: int = 900,
    block: int = 65535,
) -> bytes:
    """A FLAC file of constant (DC) subframes at the largest block size: a few bytes a
    frame for 65535 samples a channel. STREAMINFO declares ``rate``, ``channels`` and
    ``bits``; the frames take their rate and bit depth from it (codes 0), so a 1 MHz stereo
    file of 120 s is about 30 KB and decodes to 480 MB of 16-bit samples."""
    total = int(rate * seconds)
    info = struct.pack(">HH", block, block) + b"\0\0\0" + b"\0\0\0"
    packed = (
        ((rate & 0xFFFFF) << 44)
        | (((max(channels, 1) - 1) & 0x7) << 41)
        | (((max(bits, 1) - 1) & 0x1F) << 36)
        | (total & 0xFFFFFFFFF)
    )
    info += packed.to_bytes(8, "big") + bytes(16)
    out = bytearray(b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info)
    n_frames = max(1, -(-total // block)) if rate else 4
    sub = bytes([0]) + (value & ((1 << max(bits, 8)) - 1)).to_bytes(max(bits, 8) // 8, "big")
    for i in range(n_frames):
        size = block if i < n_frames - 1 or not total else total - block * i
        header = bytes([0xFF, 0xF8, 0x70, ((max(channels, 1) - 1) << 4)])
        header += _utf8_number(i) + (size - 1).to_bytes(2, "big")
        header += bytes([_crc8(header)])
        frame = header + sub * max(channels, 1)
        out += frame + _crc16(frame).to_bytes(2, "big")
    return bytes(out)


# -- MP4 box trees ------------------------------------------------------------------------


def box(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def mp4_many_boxes(n: int, kind: bytes = b"free") -> bytes:
    """An ftyp and a moov holding ``n`` empty boxes (8 bytes each)."""
    inner = struct.pack(">I4s", 8, kind) * n
    return box(b"ftyp", b"M4A \0\0\0\0M4A isom") + box(b"moov", inner)


def mp4_nested(depth: int, kind: bytes = b"trak") -> bytes:
    """An ftyp and a moov holding ``depth`` boxes each inside the one before."""
    size = 8 * depth
    headers = b"".join(struct.pack(">I4s", size - 8 * i, kind) for i in range(depth))
    return box(b"ftyp", b"M4A \0\0\0\0M4A isom") + box(b"moov", headers)


# -- the families (issue 24, items 1 and 4): name -> (bytes, file name, the refusal's word) --


def lying_headers(tmp: Path) -> dict[str, tuple[bytes, str, str]]:
    """Headers that lie: each is refused by the cheap gate (what the refusal says)."""
    return {
        "wav 150 MHz": (wav_declaring(150_000_001), "x.wav", "sample rate"),
        "wav 9 channels": (wav_declaring(48000, channels=9), "x.wav", "channels"),
        "wav rate 0": (wav_declaring(0), "x.wav", "sample rate"),
        "wav channels 0": (wav_declaring(16000, channels=0), "x.wav", "channels"),
        "wav bits 0": (wav_declaring(16000, bits=0), "x.wav", "bits"),
        "flac 1 MHz stereo 120 s": (flac_declaring(1_000_000, 2), "x.flac", "sample rate"),
        "flac 1 MHz 8 channels": (flac_declaring(1_000_000, 8), "x.flac", "sample rate"),
        "flac rate 0": (flac_declaring(0, 2, seconds=1.0), "x.flac", "sample rate"),
        "mkv 150 MHz": (matroska_declaring(150_000_001, tmp), "x.webm", "sample rate"),
        "mkv 9 channels": (matroska_channels(9, tmp), "x.webm", "channels"),
    }


def unchecked_headers(tmp: Path) -> dict[str, tuple[bytes, str, str]]:
    """Headers the gate does not read: the confined decoder's limits refuse them."""
    hidden = matroska_padded(matroska_declaring(150_000_001, tmp), 1100)
    return {"mkv 150 MHz past 1100 Voids": (hidden, "x.webm", "memory")}


def box_trees() -> dict[str, tuple[bytes, str, str]]:
    """MP4 box trees: too many boxes, or nested too deep."""
    return {
        "mp4 2M empty boxes": (mp4_many_boxes(2_000_000), "x.m4a", "boxes"),
        "mp4 nested 100k deep": (mp4_nested(100_000), "x.m4a", "nested"),
        "mp4 nested 33 deep": (mp4_nested(40), "x.m4a", "nested"),
        "mp4 top level 3M boxes": (
            mp4_many_boxes(0) + box(b"free") * 3_000_000,
            "x.m4a",
            "boxes",
        ),
    }


# -- measured, in a fresh process ---------------------------------------------------------


def measure(
    stage: str, data: bytes, file_name: str, tmp: Path, *, kill_mb: int = 1500, timeout: float = 90
) -> dict[str, Any]:
    """Run :mod:`tests.security.audio_probe` on ``data``; kill its process tree past
    ``kill_mb`` of RSS (summed over the tree) or ``timeout`` seconds."""
    path = tmp / f"probe-{file_name}"
    path.write_bytes(data)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.security.audio_probe", stage, str(path), file_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    watched = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    tree_peak = 0
    while proc.poll() is None:
        try:
            tree = [watched, *watched.children(recursive=True)]
            rss = 0
            for p in tree:
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            tree_peak = max(tree_peak, rss)
        except psutil.NoSuchProcess:
            break
        if tree_peak > kill_mb * MiB or time.monotonic() > deadline:
            for p in reversed(tree):
                with contextlib.suppress(psutil.Error):
                    p.kill()
            proc.wait()
            why = f"over {kill_mb} MB RSS" if tree_peak > kill_mb * MiB else f"over {timeout} s"
            return {"outcome": f"killed: {why}", "tree_peak_mb": round(tree_peak / MiB, 1)}
        time.sleep(0.005)
    out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"outcome": f"crashed: {err.strip()[-300:]}", "tree_peak_mb": None}
    result: dict[str, Any] = json.loads(lines[-1])
    result["tree_peak_mb"] = round(tree_peak / MiB, 1)
    return result
