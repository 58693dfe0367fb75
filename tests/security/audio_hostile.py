"""Hostile "recordings" for the decoder tests: scripts, playlists, manifests, images, refs.

Each is what ffmpeg, left to probe the content, would treat as something other than one
self-contained recording: files that name other files or URLs, or formats we do not take.
Shared by the engine's and the bot's tests (tests/security/test_decoders.py).
"""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

from PIL import Image

from engine.voice.audio import ffmpeg_exe


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
