"""Fuzzing the audio side's parsers of untrusted bytes (issue 24): WAV and FLAC headers,
MP4 box trees, and mutated real recordings, through the container check and the confined
decode. The invariant, for every input: a typed refusal (``ContainerRefused``,
``SampleRejected``, ``MediaRejected``) or a bounded success (a known container; at most
``max_seconds`` of audio), quickly and with little memory. Bounded for CI by the settings
below (derandomised, no example database): the file runs in well under a minute.
"""

from __future__ import annotations

import io
import struct
import subprocess
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.media import MediaRejected, check_audio
from engine.voice.audio import SampleRejected, decode, ffmpeg_exe
from engine.voice.container import AudioContainer, ContainerRefused, detect
from tests.security import audio_hostile as hostile
from tests.waiting import cpu_seconds

pytestmark = pytest.mark.no_database

RATE = 16000
MAX_SECONDS = 20.0
# The container check reads headers only: it must stay far below these.
CHECK_SECONDS = 2.0
CHECK_PEAK_BYTES = 8 * 1024 * 1024
DECODE_SECONDS = 30.0

FAST = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DECODING = settings(FAST, max_examples=8)


def check_bounded(data: bytes) -> AudioContainer | None:
    """``detect`` on ``data``: a container or a typed refusal, in bounded time and memory."""
    tracemalloc.start()
    started = cpu_seconds()
    try:
        return detect(io.BytesIO(data))
    except ContainerRefused:
        return None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert cpu_seconds() - started < CHECK_SECONDS
        assert peak < CHECK_PEAK_BYTES, peak


def decode_bounded(data: bytes, tmp: Path) -> None:
    """The engine's confined decode: a refusal or at most ``MAX_SECONDS`` (+1) of audio."""
    path = tmp / "fuzz.bin"
    path.write_bytes(data)
    started = cpu_seconds()
    try:
        audio = decode(path, RATE, MAX_SECONDS)
    except SampleRejected as exc:
        assert str(exc)
    else:
        assert len(audio) <= (MAX_SECONDS + 1.5) * RATE
    assert cpu_seconds() - started < DECODE_SECONDS


# -- WAV headers ---------------------------------------------------------------------------

wav_fields = st.fixed_dictionaries(
    {
        "tag": st.sampled_from([1, 3, 6, 7, 0x11, 0x55, 0xFFFE, 0]) | st.integers(0, 0xFFFF),
        "channels": st.sampled_from([0, 1, 2, 8, 9, 0xFFFF]) | st.integers(0, 0xFFFF),
        "rate": st.sampled_from([0, 1, 8000, 48000, 384000, 384001, 150_000_001, 2**32 - 1])
        | st.integers(0, 2**32 - 1),
        "bits": st.sampled_from([0, 8, 16, 24, 32, 64, 65]) | st.integers(0, 0xFFFF),
        "data_bytes": st.integers(0, 4000),
        "junk": st.binary(max_size=64),
        "cut": st.none() | st.integers(0, 80),
    }
)


def wav_of(f: dict[str, object]) -> bytes:
    data = hostile.wav_declaring(
        f["rate"],  # type: ignore[arg-type]
        f["channels"],  # type: ignore[arg-type]
        f["bits"],  # type: ignore[arg-type]
        data_bytes=f["data_bytes"],  # type: ignore[arg-type]
        fmt_tag=f["tag"],  # type: ignore[arg-type]
    )
    junk = f["junk"]
    assert isinstance(junk, bytes)
    if junk:  # an odd chunk before the format chunk
        data = data[:12] + b"JUNK" + struct.pack("<I", len(junk)) + junk + data[12:]
    cut = f["cut"]
    return data[: cut + 12] if isinstance(cut, int) else data


@FAST
@given(wav_fields)
def test_wav_headers_are_checked_with_bounded_cost(fields: dict[str, object]) -> None:
    got = check_bounded(wav_of(fields))
    if got is not None:
        assert got is AudioContainer.WAV
        assert 1 <= fields["rate"] <= 384000 and 1 <= fields["channels"] <= 8  # type: ignore[operator]


# For the decoder: headers that pass the gate more often (the gate refuses most of the above).
plausible_wav = st.fixed_dictionaries(
    {
        "tag": st.sampled_from([1, 1, 3, 6, 7, 0x11, 0xFFFE]),
        "channels": st.integers(1, 8),
        "rate": st.sampled_from([1, 8000, 44100, 384000]) | st.integers(1, 384000),
        "bits": st.sampled_from([1, 8, 16, 24, 32, 64]),
        "data_bytes": st.integers(0, 40_000),
        "junk": st.binary(max_size=8),
        "cut": st.none(),
    }
)


@DECODING
@given(plausible_wav)
def test_wav_headers_decode_confined(
    tmp_path_factory: pytest.TempPathFactory, fields: dict[str, object]
) -> None:
    decode_bounded(wav_of(fields), tmp_path_factory.mktemp("wav"))


# -- FLAC stream headers -------------------------------------------------------------------

flac_fields = st.fixed_dictionaries(
    {
        "rate": st.sampled_from([0, 8000, 44100, 384000, 384001, 1_000_000, 2**20 - 1])
        | st.integers(0, 2**20 - 1),
        "channels": st.integers(1, 8),
        "bits": st.sampled_from([4, 8, 16, 24, 32]),
        "seconds": st.floats(0.0, 3.0),
        "block": st.sampled_from([16, 192, 4096, 65535]),
        "flip": st.none() | st.tuples(st.integers(0, 200), st.integers(0, 255)),
    }
)


def flac_of(f: dict[str, object]) -> bytes:
    rate = f["rate"]
    assert isinstance(rate, int)
    block = f["block"]
    assert isinstance(block, int)
    # At most 40 frames: the file is what the header says, not how many frames it has.
    seconds = min(float(f["seconds"]), 40 * block / max(rate, 1))  # type: ignore[arg-type]
    data = bytearray(
        hostile.flac_declaring(
            rate,
            f["channels"],  # type: ignore[arg-type]
            seconds=seconds,
            bits=f["bits"],  # type: ignore[arg-type]
            block=block,
        )
    )
    flip = f["flip"]
    if isinstance(flip, tuple) and flip[0] < len(data):
        data[flip[0]] ^= flip[1]
    return bytes(data)


@FAST
@given(flac_fields)
def test_flac_headers_are_checked_with_bounded_cost(fields: dict[str, object]) -> None:
    check_bounded(flac_of(fields))


@DECODING
@given(flac_fields)
def test_flac_headers_decode_confined(
    tmp_path_factory: pytest.TempPathFactory, fields: dict[str, object]
) -> None:
    decode_bounded(flac_of(fields), tmp_path_factory.mktemp("flac"))


# -- MP4 box trees -------------------------------------------------------------------------

KINDS = [
    b"moov", b"trak", b"mdia", b"minf", b"dinf", b"dref", b"url ", b"alis", b"meta",
    b"udta", b"edts", b"free", b"mdat", b"cmov", b"rmra", b"stbl", b"ftyp",
]  # fmt: skip


def _leaf() -> st.SearchStrategy[bytes]:
    return st.builds(hostile.box, st.sampled_from(KINDS), st.binary(max_size=12))


def _parent(children: st.SearchStrategy[list[bytes]]) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda kind, pre, kids: hostile.box(kind, pre + b"".join(kids)),
        st.sampled_from(KINDS),
        st.sampled_from([b"", b"\0\0\0\0", b"\0\0\0\x01", b"\0\0\0\0\0\0\0\x01"]),
        children,
    )


trees = st.recursive(_leaf(), lambda kids: _parent(st.lists(kids, max_size=6)), max_leaves=60)


@st.composite
def mp4_files(draw: st.DrawFn) -> bytes:
    data = bytearray(hostile.box(b"ftyp", b"M4A \0\0\0\0M4A isom"))
    data += hostile.box(b"moov", b"".join(draw(st.lists(trees, max_size=4))))
    data += b"".join(draw(st.lists(trees, max_size=3)))
    # Lie in some size fields: 0 (to the end), 1 (a 64-bit size follows), off by a bit.
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(8, max(8, len(data) - 4)))
        data[at : at + 4] = struct.pack(
            ">I", draw(st.sampled_from([0, 1, 7, 8, 9, 0xFFFFFFFF]) | st.integers(0, 2**32 - 1))
        )
    if draw(st.booleans()):  # a wide repetition: many empty boxes, or a deep nesting
        n = draw(st.integers(1, 20_000))
        data += (
            hostile.mp4_many_boxes(n)[24:]
            if draw(st.booleans())
            else hostile.mp4_nested(min(n, 5000))[24:]
        )
    return bytes(data)


@FAST
@given(mp4_files())
def test_mp4_box_trees_are_walked_with_bounded_cost(data: bytes) -> None:
    got = check_bounded(data)
    assert got in (None, AudioContainer.MP4)


@settings(FAST, max_examples=50)
@given(mp4_files())
def test_the_bot_refuses_mp4_box_trees_with_a_message(data: bytes) -> None:
    try:
        check_audio(data, "x.m4a")
    except MediaRejected as exc:
        assert 0 < len(str(exc)) < 220
    else:  # no tree here holds audio that decodes
        raise AssertionError("a box tree without audio was accepted")


# -- mutated real recordings ---------------------------------------------------------------


TONE = "sine=f=220:r=22050:d=4"


@pytest.fixture(scope="module")
def real_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("real")
    out: dict[str, bytes] = {}
    for name, args in {
        "x.wav": ["-ac", "2", "-f", "wav"],
        "x.flac": ["-ac", "2", "-f", "flac"],
        "x.m4a": ["-ac", "2", "-c:a", "aac", "-f", "mp4"],
        "x.webm": ["-ac", "2", "-c:a", "libopus", "-f", "webm"],
        "x.ogg": ["-ac", "2", "-c:a", "libvorbis", "-f", "ogg"],
        "x.mp3": ["-ac", "2", "-f", "mp3"],
    }.items():
        path = tmp / name
        subprocess.run(
            [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", TONE, *args, str(path)],
            check=True,
            capture_output=True,
        )
        out[name] = path.read_bytes()
    return out


mutations = st.lists(
    st.tuples(st.integers(0, 4095), st.integers(1, 255), st.sampled_from(["xor", "set32"])),
    min_size=1,
    max_size=8,
)


def mutate(data: bytes, changes: list[tuple[int, int, str]]) -> bytes:
    out = bytearray(data)
    for at, value, how in changes:
        at %= min(len(out), 4096)
        if how == "xor":
            out[at] ^= value
        else:  # a 32-bit field set to a large or small value
            out[at : at + 4] = struct.pack(">I", (value << 24) | value)
    return bytes(out)


@FAST
@given(st.sampled_from(["x.wav", "x.flac", "x.m4a", "x.webm", "x.ogg", "x.mp3"]), mutations)
def test_mutated_recordings_are_checked_with_bounded_cost(
    real_files: dict[str, bytes], name: str, changes: list[tuple[int, int, str]]
) -> None:
    check_bounded(mutate(real_files[name], changes))


@settings(DECODING, max_examples=10)
@given(st.sampled_from(["x.wav", "x.flac", "x.m4a", "x.webm", "x.ogg", "x.mp3"]), mutations)
def test_mutated_recordings_decode_confined_in_engine_and_bot(
    real_files: dict[str, bytes],
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    changes: list[tuple[int, int, str]],
) -> None:
    data = mutate(real_files[name], changes)
    decode_bounded(data, tmp_path_factory.mktemp("mut"))
    try:
        info = check_audio(data, name, min_seconds=0.0, max_seconds=MAX_SECONDS)
    except MediaRejected as exc:
        assert 0 < len(str(exc)) < 220
    else:
        assert info.duration_seconds <= MAX_SECONDS
