"""Which audio container a file is, told from its bytes, and how to make ffmpeg read only it.

ffmpeg left to itself picks a demuxer from the content, and several of its demuxers open
other files or URLs named inside the input: concat scripts, HLS and DASH manifests, image2
patterns, data references inside mov/mp4. A voice sample that is such a script would make
the decoder read another member's upload or any local file. So the container is detected
here, from magic bytes, among the few a recording comes in; ffmpeg is then run with that
demuxer forced, with no protocol but the one input, and mov with data references off (and
refused outright when it declares external ones).

Standard library only: the engine and the bot both use it, and it must stay free of either.
"""

from __future__ import annotations

import struct
from enum import StrEnum
from typing import BinaryIO

# How much of the start of a file the sniffer looks at (an ID3 tag may come first).
HEAD_BYTES = 64 * 1024
# A moov box bigger than this is not a voice recording's (a 5-minute m4a has ~100 KB).
_MAX_MOOV_BYTES = 16 * 1024 * 1024
# Boxes that hold other boxes, on the way from moov down to every dref.
_MP4_PARENTS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"dinf", b"edts", b"udta"})
# Inside moov: compressed movie headers (cannot be checked) and reference movies.
_MP4_REFUSED = frozenset({b"cmov", b"rmra", b"rmda", b"rdrf"})


class AudioContainer(StrEnum):
    """An accepted container; the value is the ffmpeg demuxer forced to read it."""

    WAV = "wav"  # RIFF....WAVE
    MP3 = "mp3"  # an ID3 tag or an MPEG audio frame header
    OGG = "ogg"  # OggS (Vorbis, Opus)
    FLAC = "flac"  # fLaC
    MP4 = "mov"  # ....ftyp (m4a, mp4)
    MATROSKA = "matroska"  # EBML (webm, mka)


ACCEPTED = "wav, mp3, ogg, flac, m4a or webm"


class ContainerRefused(ValueError):
    """The file is not a single-file recording in an accepted container; says why."""


def _id3_length(head: bytes) -> int:
    """Bytes taken by a leading ID3v2 tag (0 when there is none)."""
    if len(head) < 10 or head[:3] != b"ID3":
        return 0
    size = 0
    for byte in head[6:10]:
        size = (size << 7) | (byte & 0x7F)
    footer = 10 if head[5] & 0x10 else 0
    return 10 + size + footer


def _mpeg_audio_frame(head: bytes) -> bool:
    """Whether ``head`` starts with a valid MPEG-1/2/2.5 layer I-III frame header."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version = (head[1] >> 3) & 0x3
    layer = (head[1] >> 1) & 0x3
    bitrate = head[2] >> 4
    rate = (head[2] >> 2) & 0x3
    # Version 01 and layer 00 are reserved (layer 00 is also ADTS AAC, not accepted).
    return version != 1 and layer != 0 and bitrate != 0xF and rate != 0x3


def sniff(head: bytes) -> AudioContainer | None:
    """The container of a file starting with ``head``, or ``None`` when it is not one we take."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return AudioContainer.WAV
    if head[:4] == b"OggS":
        return AudioContainer.OGG
    if head[:4] == b"fLaC":
        return AudioContainer.FLAC
    if head[4:8] == b"ftyp":
        return AudioContainer.MP4
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return AudioContainer.MATROSKA
    skip = _id3_length(head)
    if skip:
        # Some taggers put an ID3 tag before FLAC; everything else behind ID3 is MP3.
        return AudioContainer.FLAC if head[skip : skip + 4] == b"fLaC" else AudioContainer.MP3
    if _mpeg_audio_frame(head):
        return AudioContainer.MP3
    return None


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """The (type, payload start, payload end) of each box in ``data[start:end]``."""
    found: list[tuple[bytes, int, int]] = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise ContainerRefused("the m4a file is damaged (a box is cut short)")
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ContainerRefused("the m4a file is damaged (a box overruns its parent)")
        found.append((kind, pos + header, pos + size))
        pos += size
    return found


def _check_dref(data: bytes, start: int, end: int) -> None:
    # A full box: version and flags, an entry count, then one box per data reference.
    for kind, body, stop in _boxes(data, start + 8, end):
        flags = int.from_bytes(data[body + 1 : body + 4], "big") if body + 4 <= stop else 0
        if not flags & 0x1:  # 0x1: "the media data is in this same file"
            raise ContainerRefused(
                f"the m4a file refers to media in other files ({kind.decode('latin-1')!r} "
                "reference); send one self-contained recording"
            )


def _check_moov(data: bytes, start: int, end: int) -> None:
    for kind, body, stop in _boxes(data, start, end):
        if kind in _MP4_REFUSED:
            raise ContainerRefused(
                "the m4a file uses compressed or reference movie headers; "
                "send a plain m4a recording"
            )
        if kind == b"dref":
            _check_dref(data, body, stop)
        elif kind in _MP4_PARENTS:
            _check_moov(data, body, stop)
        elif kind == b"meta":  # a full box: 4 bytes of version and flags before its children
            _check_moov(data, body + 4, stop)


def check_mp4(fh: BinaryIO) -> None:
    """Refuse an mp4/m4a whose movie header points at media outside the file.

    Walks the top-level boxes by their headers (media data is skipped, not read) and
    every ``dref`` under ``moov``; raises :class:`ContainerRefused` on an external
    reference, a compressed or reference movie header, or a damaged box structure.
    """
    fh.seek(0, 2)
    total = fh.tell()
    pos = 0
    seen_moov = False
    while pos + 8 <= total:
        fh.seek(pos)
        header = fh.read(16)
        size, kind = struct.unpack(">I4s", header[:8])
        head_len = 8
        if size == 1:
            if len(header) < 16:
                raise ContainerRefused("the m4a file is damaged (a box is cut short)")
            size = struct.unpack(">Q", header[8:16])[0]
            head_len = 16
        elif size == 0:
            size = total - pos
        if size < head_len:
            raise ContainerRefused("the m4a file is damaged (a box has a bad size)")
        if kind == b"moov":
            if size > _MAX_MOOV_BYTES:
                raise ContainerRefused("the m4a file's header is too large for a recording")
            fh.seek(pos)
            moov = fh.read(size)
            _check_moov(moov, head_len, len(moov))
            seen_moov = True
        elif kind in _MP4_REFUSED:
            raise ContainerRefused("the m4a file uses reference movie headers")
        pos += size
    if not seen_moov:
        raise ContainerRefused("the m4a file has no movie header (moov)")


def detect(fh: BinaryIO) -> AudioContainer:
    """The accepted container of the file open as ``fh``; raises :class:`ContainerRefused`."""
    fh.seek(0)
    head = fh.read(HEAD_BYTES)
    container = sniff(head)
    if container is None:
        raise ContainerRefused(f"the file is not audio we can decode (not a {ACCEPTED} recording)")
    if container is AudioContainer.MP4:
        check_mp4(fh)
    fh.seek(0)
    return container


def ffmpeg_input(container: AudioContainer, source: str) -> list[str]:
    """ffmpeg arguments that read ``source`` (``file:<path>`` or ``pipe:0``) as ``container``.

    The demuxer is forced (no probing, so no concat, playlist, manifest or image2 demuxer),
    and the only protocol allowed is the one ``source`` uses, for every file the demuxer
    might open (so references inside the input cannot open anything else).
    """
    protocol = source.split(":", 1)[0]
    if protocol not in ("file", "pipe"):
        raise ValueError(f"source must be file:<path> or pipe:0, not {source!r}")
    extra = (
        ["-enable_drefs", "0", "-use_absolute_path", "0"] if container is AudioContainer.MP4 else []
    )
    return ["-protocol_whitelist", protocol, "-f", container.value, *extra, "-i", source]
