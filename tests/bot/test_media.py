"""The media checks on real files: audio decoded by pydub/ffmpeg, images by Pillow."""

from __future__ import annotations

import asyncio
import io
import subprocess
import zipfile

import pytest
from PIL import Image

from bot.media import (
    MediaRejected,
    build_image_set,
    check_audio,
    contact_sheet,
    ffmpeg_path,
    inspect_zip,
)
from tests.bot.media_samples import picture, speech_wav, zip_of


async def test_a_real_recording_is_measured_in_every_container() -> None:
    wav = await speech_wav()
    info = check_audio(wav, "me.wav")
    assert 5 < info.duration_seconds < 60 and info.channels == 1
    # The same speech as MP3 (made by the same ffmpeg the bot uses) measures the same.
    made = await asyncio.to_thread(
        subprocess.run,
        [ffmpeg_path(), "-loglevel", "error", "-i", "pipe:0", "-f", "mp3", "pipe:1"],
        input=wav,
        capture_output=True,
        check=True,
    )
    mp3 = made.stdout
    assert check_audio(mp3, "me.mp3").duration_seconds == pytest.approx(
        info.duration_seconds, abs=0.2
    )


async def test_audio_refusals_say_why() -> None:
    wav = await speech_wav()
    with pytest.raises(MediaRejected, match="not an audio file"):
        check_audio(wav, "me.exe")
    with pytest.raises(MediaRejected, match="could not be decoded"):
        check_audio(b"\x01" * 4096, "me.ogg")
    with pytest.raises(MediaRejected, match="at most 5 s"):
        check_audio(wav, "me.wav", max_seconds=5)
    with pytest.raises(MediaRejected, match="at least 60 s"):
        check_audio(wav, "me.wav", min_seconds=60)
    with pytest.raises(MediaRejected, match="over 1 MB"):
        check_audio(wav + b"\0" * (1024 * 1024), "me.wav", max_bytes=1024 * 1024)


def test_images_are_turned_upright_deduplicated_and_checked_for_size() -> None:
    built = build_image_set(
        [
            ("sideways.jpg", picture(1, (400, 300), exif_rotate=True)),
            ("b.jpg", picture(2)),
            ("copy-of-b.jpg", picture(2)),
            ("small.jpg", picture(3, (120, 500))),
            ("broken.png", b"\x89PNG nope"),
            ("readme.md", b"# hi"),
        ]
    )
    assert built.kept == ("sideways.jpg", "b.jpg")
    reasons = {r.name: r.reason for r in built.refused}
    assert reasons["copy-of-b.jpg"] == "duplicate of another image"
    assert reasons["small.jpg"].startswith("too small (120x500")
    assert reasons["broken.png"] == "could not be decoded"
    assert reasons["readme.md"] == "not an image file"
    with zipfile.ZipFile(io.BytesIO(built.zip_bytes)) as archive:
        assert archive.namelist() == ["01.png", "02.png"]
        with Image.open(io.BytesIO(archive.read("01.png"))) as upright:
            # Stored 400x300 with "rotate 90°": the member's camera meant 300x400.
            assert upright.size == (300, 400)


def test_a_zip_is_checked_like_attachments_and_junk_entries_are_skipped() -> None:
    data = zip_of(
        {
            "set/a.jpg": picture(1),
            "set/b.jpg": picture(2),
            "__MACOSX/set/._a.jpg": b"junk",
            "set/.DS_Store": b"junk",
        }
    )
    assert inspect_zip(data).kept == ("set/a.jpg", "set/b.jpg")
    with pytest.raises(MediaRejected, match="not a readable zip"):
        inspect_zip(b"PK nope")
    with pytest.raises(MediaRejected, match="None of those images can be used"):
        inspect_zip(zip_of({"tiny.jpg": picture(1, (50, 50))}))


def test_the_contact_sheet_is_a_grid_of_every_kept_image() -> None:
    built = build_image_set([(f"{i}.jpg", picture(i)) for i in range(7)])
    with Image.open(io.BytesIO(contact_sheet(built.thumbnails))) as sheet:
        # 7 thumbnails in rows of 5: two rows.
        assert sheet.size == (5 * 166 + 6, 2 * 166 + 6)
