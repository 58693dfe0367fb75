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
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, BinaryIO

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


# What a box walk may visit, in all, and how deep boxes may sit inside each other: a voice
# recording's movie header has a few dozen boxes on the way to its data references.
MAX_BOXES = 10_000
MAX_DEPTH = 32


def _box_header(fh: BinaryIO, pos: int, end: int, *, nested: bool) -> tuple[bytes, int, int]:
    """The (type, payload start, box end) of the box at ``pos``, read from its header only."""
    fh.seek(pos)
    header = fh.read(16)
    if len(header) < 8:
        raise ContainerRefused("the m4a file is damaged (a box is cut short)")
    size, kind = struct.unpack(">I4s", header[:8])
    head_len = 8
    if size == 1:
        if len(header) < 16 or pos + 16 > end:
            raise ContainerRefused("the m4a file is damaged (a box is cut short)")
        size = struct.unpack(">Q", header[8:16])[0]
        head_len = 16
    elif size == 0:
        size = end - pos
    if size < head_len:
        raise ContainerRefused("the m4a file is damaged (a box has a bad size)")
    if nested and pos + size > end:
        raise ContainerRefused("the m4a file is damaged (a box overruns its parent)")
    return kind, pos + head_len, pos + size


def check_mp4(fh: BinaryIO) -> None:
    """Refuse an mp4/m4a whose movie header points at media outside the file.

    Walks the top-level boxes and, under ``moov``, the boxes on the way to every ``dref``,
    by their headers alone (media data is skipped, not read), iteratively: at most
    :data:`MAX_BOXES` boxes in all and :data:`MAX_DEPTH` levels, so that the walk costs
    constant memory and bounded time whatever the tree. Raises :class:`ContainerRefused`
    on an external reference, a compressed or reference movie header, a damaged box
    structure or a tree past those bounds.
    """
    fh.seek(0, 2)
    total = fh.tell()
    seen_moov = False
    visited = 0
    # The boxes being walked, outermost first: [next box, end, what they are inside].
    stack: list[list[Any]] = [[0, total, "top"]]
    while stack:
        frame = stack[-1]
        pos, end, inside = frame
        if pos + 8 > end:
            stack.pop()
            continue
        visited += 1
        if visited > MAX_BOXES:
            raise ContainerRefused(
                f"the m4a file has more than {MAX_BOXES} boxes in its header; "
                "send a plain m4a recording"
            )
        kind, body, stop = _box_header(fh, pos, end, nested=inside != "top")
        frame[0] = stop
        if kind in _MP4_REFUSED:
            raise ContainerRefused(
                "the m4a file uses compressed or reference movie headers; "
                "send a plain m4a recording"
            )
        if inside == "dref":
            fh.seek(body)
            flags = int.from_bytes(fh.read(4)[1:4], "big") if body + 4 <= stop else 0
            if not flags & 0x1:  # 0x1: "the media data is in this same file"
                raise ContainerRefused(
                    f"the m4a file refers to media in other files ({kind.decode('latin-1')!r} "
                    "reference); send one self-contained recording"
                )
            continue
        child: tuple[int, str] | None = None
        if inside == "top":
            if kind == b"moov":
                if stop - pos > _MAX_MOOV_BYTES:
                    raise ContainerRefused("the m4a file's header is too large for a recording")
                seen_moov = True
                child = (body, "moov")
        elif kind == b"dref":  # a full box: version and flags, an entry count, the entries
            child = (body + 8, "dref")
        elif kind in _MP4_PARENTS:
            child = (body, "moov")
        elif kind == b"meta":  # a full box: 4 bytes of version and flags before its children
            child = (body + 4, "moov")
        if child is not None:
            if len(stack) >= MAX_DEPTH:
                raise ContainerRefused(
                    f"the m4a file's boxes are nested more than {MAX_DEPTH} deep; "
                    "send a plain m4a recording"
                )
            stack.append([child[0], stop, child[1]])
    if not seen_moov:
        raise ContainerRefused("the m4a file has no movie header (moov)")


# What a recording's header may declare: the cheap first gate before any decoder runs
# (the decoder's own limits, engine.confine, bound what the gate cannot see).
MAX_DECLARED_RATE = 384_000
MAX_DECLARED_CHANNELS = 8
_MAX_WAV_CHUNKS = 64  # chunks looked at before the format chunk
# WAV format tags whose bits per sample must be set: PCM, IEEE float, A-law, mu-law, extensible.
_WAV_PCM_TAGS = frozenset({0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE})


class HeaderRefused(ContainerRefused):
    """The recording's header declares what no voice recording is (a rate, channels, bits)."""


@dataclass(frozen=True, slots=True)
class Declared:
    """What a recording's header says its audio is."""

    sample_rate: int
    channels: int
    bits: int  # 0 where the codec has no fixed sample size


def _wav_format(fh: BinaryIO) -> Declared:
    fh.seek(0, 2)
    total = fh.tell()
    pos = 12
    for _ in range(_MAX_WAV_CHUNKS):
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            break
        kind, size = struct.unpack("<4sI", head)
        if kind == b"fmt ":
            body = fh.read(min(size, 16))
            if size < 16 or len(body) < 16:
                raise ContainerRefused("the WAV file is damaged (its format header is cut short)")
            tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", body)
            declared = Declared(rate, channels, bits if tag in _WAV_PCM_TAGS else 0)
            check_declared(declared)  # rate and channels first: the commonest lie
            if tag in _WAV_PCM_TAGS:
                if not 1 <= bits <= 64:
                    raise HeaderRefused(
                        f"the recording declares {bits} bits a sample; send an ordinary recording"
                    )
                if align == 0:
                    raise HeaderRefused(
                        "the recording declares 0 bytes a sample frame; send an ordinary recording"
                    )
            return declared
        pos += 8 + size + (size & 1)
        if pos >= total:
            break
    raise ContainerRefused(
        "the WAV file has no format header: it is not audio we can decode (send a wav, "
        "mp3, m4a, ogg, flac or webm recording)"
    )


def _flac_format(fh: BinaryIO) -> Declared:
    fh.seek(0)
    skip = _id3_length(fh.read(10))
    fh.seek(skip)
    head = fh.read(4 + 4 + 18)
    if len(head) < 26 or head[:4] != b"fLaC" or head[4] & 0x7F != 0 or head[5:8] != b"\0\0\x22":
        raise ContainerRefused("the FLAC file is damaged (its stream header is missing)")
    packed = int.from_bytes(head[18:26], "big")
    rate = packed >> 44
    channels = ((packed >> 41) & 0x7) + 1
    bits = ((packed >> 36) & 0x1F) + 1
    return Declared(rate, channels, bits)


# Matroska (EBML) elements on the way to an audio track's declared format.
_EBML_SEGMENT = 0x18538067
_EBML_TRACKS = 0x1654AE6B
_EBML_TRACK_ENTRY = 0xAE
_EBML_AUDIO = 0xE1
_EBML_RATE = 0xB5
_EBML_CHANNELS = 0x9F
_EBML_CLUSTER = 0x1F43B675
_MAX_EBML_ELEMENTS = 1024  # elements looked at, in all, before giving up on finding Tracks
_UNKNOWN = -1


def _vint(fh: BinaryIO, *, keep_marker: bool) -> int | None:
    """An EBML variable-length integer at the file's position (``None`` at the end;
    :data:`_UNKNOWN` for a size of all ones)."""
    first = fh.read(1)
    if not first:
        return None
    length = 9 - first[0].bit_length()
    if not 1 <= length <= 8:
        return None  # not an element header: the gate gives up, the decoder's limits hold
    rest = fh.read(length - 1)
    if len(rest) < length - 1:
        return None
    value = int.from_bytes(first + rest, "big")
    if keep_marker:
        return value
    value &= (1 << (7 * length)) - 1
    return _UNKNOWN if value == (1 << (7 * length)) - 1 else value


def _matroska_format(fh: BinaryIO) -> Declared | None:
    """The first audio track's declared rate and channels (``None`` when its Tracks are
    not found within a bounded number of elements: the decoder's limits still hold)."""
    fh.seek(0, 2)
    total = fh.tell()
    fh.seek(0)
    ends = [total]  # the ends of the master elements entered
    for _ in range(_MAX_EBML_ELEMENTS):
        while len(ends) > 1 and fh.tell() >= ends[-1]:
            ends.pop()
        start = fh.tell()
        kind = _vint(fh, keep_marker=True)
        size = _vint(fh, keep_marker=False)
        if kind is None or size is None:
            return None
        body = fh.tell()
        end = ends[-1] if size == _UNKNOWN else min(body + size, ends[-1])
        if kind == _EBML_CLUSTER:  # media data: the tracks were not declared before it
            return None
        if kind in (_EBML_SEGMENT, _EBML_TRACKS, _EBML_TRACK_ENTRY):
            ends.append(end)
            continue
        if kind == _EBML_AUDIO:
            rate, channels = 8000.0, 1  # Matroska's defaults
            fh.seek(body)
            for _ in range(_MAX_EBML_ELEMENTS):
                if fh.tell() >= end:
                    break
                field = _vint(fh, keep_marker=True)
                length = _vint(fh, keep_marker=False)
                if field is None or length is None or length == _UNKNOWN or length > 8:
                    break
                raw = fh.read(length)
                if field == _EBML_RATE and length in (4, 8):
                    rate = struct.unpack(">f" if length == 4 else ">d", raw)[0]
                elif field == _EBML_CHANNELS:
                    channels = int.from_bytes(raw, "big")
            finite = rate == rate and 0 <= rate < 2**32  # NaN or infinite: declared huge
            return Declared(int(rate) if finite else 2**32, channels, 0)
        if size == _UNKNOWN or end <= start:
            return None
        fh.seek(end)
    return None


def _ogg_format(fh: BinaryIO) -> Declared | None:
    """A Vorbis or Opus stream's declared format, from its first packet."""
    fh.seek(0)
    page = fh.read(27 + 255 + 30)
    if len(page) < 28:
        return None
    packet = page[27 + page[26] :]
    if packet[:7] == b"\x01vorbis" and len(packet) >= 16:
        return Declared(int.from_bytes(packet[12:16], "little"), packet[11], 0)
    if packet[:8] == b"OpusHead" and len(packet) >= 10:
        return Declared(48000, packet[9], 0)  # Opus always decodes at 48 kHz
    return None


def declared_format(fh: BinaryIO, container: AudioContainer) -> Declared | None:
    """What the header of a WAV, FLAC, Ogg or Matroska file declares (``None`` where it
    is not found, and for MP3 and MP4: their decode is bounded by the decoder's limits)."""
    if container is AudioContainer.WAV:
        return _wav_format(fh)
    if container is AudioContainer.FLAC:
        return _flac_format(fh)
    if container is AudioContainer.MATROSKA:
        return _matroska_format(fh)
    if container is AudioContainer.OGG:
        return _ogg_format(fh)
    return None


def check_declared(declared: Declared) -> None:
    """Refuse a header declaring a sample rate, channel count or sample size no recording has."""
    if not 1 <= declared.sample_rate <= MAX_DECLARED_RATE:
        raise HeaderRefused(
            f"the recording declares a sample rate of {declared.sample_rate} Hz; "
            f"at most {MAX_DECLARED_RATE} Hz is accepted"
        )
    if not 1 <= declared.channels <= MAX_DECLARED_CHANNELS:
        raise HeaderRefused(
            f"the recording declares {declared.channels} channels; "
            f"1 to {MAX_DECLARED_CHANNELS} are accepted"
        )


def detect(fh: BinaryIO) -> AudioContainer:
    """The accepted container of the file open as ``fh``; raises :class:`ContainerRefused`.

    Cheap checks of what the file declares come with it: an MP4's box tree (no external
    references, bounded), the sample rate and channels of a WAV, FLAC, Ogg or Matroska
    header (and a WAV's sample size).
    """
    fh.seek(0)
    head = fh.read(HEAD_BYTES)
    container = sniff(head)
    if container is None:
        raise ContainerRefused(f"the file is not audio we can decode (not a {ACCEPTED} recording)")
    if container is AudioContainer.MP4:
        check_mp4(fh)
    declared = declared_format(fh, container)
    if declared is not None:
        check_declared(declared)
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


def ffmpeg_decode_mono(
    ffmpeg: str, container: AudioContainer, source: str, seconds: float, sample_rate: int
) -> list[str]:
    """The whole ffmpeg command that decodes ``source`` (see :func:`ffmpeg_input`) to 16-bit
    little-endian mono at ``sample_rate`` on stdout, stopping just past ``seconds`` (hours of
    low-bitrate audio must not unpack whole), with one thread; run it confined."""
    return [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-filter_threads",
        "1",
        "-threads",
        "1",
        *ffmpeg_input(container, source),
        "-t",
        f"{seconds:.3f}",
        "-vn",
        "-threads",
        "1",
        "-ac",
        "1",
        "-ar",
        str(sample_rate),
        "-f",
        "s16le",
        "-acodec",
        "pcm_s16le",
        "pipe:1",
    ]
