"""Results made into a server's expressions: soundboard sounds, custom emoji, stickers,
encoded within Discord's documented limits.

Discord's limits (developer documentation, "Soundboard", "Emoji", "Sticker" resources):

- soundboard sound: MP3 or Ogg, at most 512 KB and 5.2 seconds;
- custom emoji: at most 256 KB, shown at 128x128 (PNG, JPEG, GIF, WebP, AVIF);
- guild sticker: PNG, APNG, GIF or Lottie JSON, at most 512 KB, exactly 320x320.

The bytes are our own outputs, but they are re-encoded the way every member's file is:
ffmpeg and Pillow run confined (:mod:`engine.confine`), the container detected from the
bytes. Blocking code: call from a thread.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import replace
from pathlib import Path

from PIL import Image, ImageOps

from engine.confine import ConfinementError, Limits, MiB, process_confiner
from engine.voice.audio import DECODE_LIMITS, ffmpeg_exe
from engine.voice.container import ContainerRefused, detect, ffmpeg_input

SOUND_MAX_SECONDS = 5.2
SOUND_MAX_BYTES = 512 * 1024
EMOJI_SIDE = 128
EMOJI_MAX_BYTES = 256 * 1024
STICKER_SIDE = 320
STICKER_MAX_BYTES = 512 * 1024
# A sound is cut a little under the limit (an MP3 frame past a cut may lengthen it), faded
# out over its last moment so it does not end on a click.
SOUND_SECONDS = 5.0
_FADE_SECONDS = 0.15
_SOUND_RATE = 48000
_SOUND_KBPS = 128
IMAGE_LIMITS = Limits(memory_bytes=512 * MiB, cpu_seconds=20, wall_seconds=60)


class ExpressionMediaError(ValueError):
    """The result cannot be made into an expression; the message says why, for members."""


def soundboard_mp3(audio: bytes) -> bytes:
    """``audio`` (any container the engine decodes) as a soundboard sound: mono MP3, cut
    to :data:`SOUND_SECONDS` with a short fade-out, at most :data:`SOUND_MAX_BYTES`."""
    try:
        container = detect(io.BytesIO(audio))
    except ContainerRefused as exc:
        raise ExpressionMediaError(f"the speech cannot be read: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="tada-sound-") as tmp:
        path = Path(tmp) / "speech"
        path.write_bytes(audio)
        fade_at = SOUND_SECONDS - _FADE_SECONDS
        cmd = [
            ffmpeg_exe(),
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-threads",
            "1",
            *ffmpeg_input(container, f"file:{path}"),
            "-t",
            f"{SOUND_SECONDS:.2f}",
            "-vn",
            "-af",
            f"afade=t=out:st={fade_at:.2f}:d={_FADE_SECONDS:.2f}",
            "-ac",
            "1",
            "-ar",
            str(_SOUND_RATE),
            "-c:a",
            "libmp3lame",
            "-b:a",
            f"{_SOUND_KBPS}k",
            "-f",
            "mp3",
            "-",
        ]
        try:
            out = process_confiner().run_command(
                cmd, replace(DECODE_LIMITS, output_bytes=SOUND_MAX_BYTES)
            )
        except ConfinementError as exc:
            raise ExpressionMediaError("the speech could not be made into a sound") from exc
    if not out:
        raise ExpressionMediaError("the speech could not be made into a sound")
    return out


def _square_png(data: bytes, side: int, max_bytes: int) -> bytes:
    """Run in a confined child: the image centre-cropped to ``side`` x ``side``, as a PNG of
    at most ``max_bytes`` (fewer colours until it fits)."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (side * 2, side * 2))
        square = ImageOps.fit(ImageOps.exif_transpose(image).convert("RGBA"), (side, side))
    for colours in (None, 256, 128, 64, 32):
        out = io.BytesIO()
        picture = square if colours is None else square.quantize(colours)
        picture.save(out, "PNG", optimize=True)
        if out.tell() <= max_bytes:
            return out.getvalue()
    raise ValueError("the image does not fit")


def _fit(data: bytes, side: int, max_bytes: int) -> bytes:
    try:
        return process_confiner().call(_square_png, data, side, max_bytes, limits=IMAGE_LIMITS)
    except ConfinementError as exc:
        raise ExpressionMediaError("the image could not be made into an expression") from exc


def emoji_png(image: bytes) -> bytes:
    """``image`` as a custom emoji: 128x128 PNG, at most 256 KB."""
    return _fit(image, EMOJI_SIDE, EMOJI_MAX_BYTES)


def sticker_png(image: bytes) -> bytes:
    """``image`` as a guild sticker: 320x320 PNG, at most 512 KB."""
    return _fit(image, STICKER_SIDE, STICKER_MAX_BYTES)
