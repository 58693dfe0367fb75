"""Real files for bot tests: speech from the packaged Piper voice, images drawn by Pillow."""

from __future__ import annotations

import asyncio
import io
import zipfile
from functools import cache

from PIL import Image, ImageDraw

from tests.conftest import REFERENCE_VOICE, backend_for
from tests.engine.voice.conftest import SAMPLE_TEXT, wav_bytes


@cache
def _speech_wav() -> bytes:
    speech = backend_for(REFERENCE_VOICE).base_speech(SAMPLE_TEXT)
    return wav_bytes(speech.audio, speech.sample_rate)


async def speech_wav() -> bytes:
    """A real recording of speech, several seconds long (WAV)."""
    return await asyncio.to_thread(_speech_wav)


def picture(seed: int, size: tuple[int, int] = (320, 320), *, exif_rotate: bool = False) -> bytes:
    """A distinct JPEG per ``seed`` (optionally stored sideways with an EXIF orientation)."""
    image = Image.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 193) % 256))
    draw = ImageDraw.Draw(image)
    draw.ellipse(
        (20 + seed * 7 % 60, 30, 200, 220 + seed % 50), fill=(255, 255 - seed * 20 % 255, 0)
    )
    out = io.BytesIO()
    if exif_rotate:
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° clockwise when shown
        image.save(out, "JPEG", exif=exif.tobytes())
    else:
        image.save(out, "JPEG")
    return out.getvalue()


def zip_of(files: dict[str, bytes]) -> bytes:
    """A zip holding ``files``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()
