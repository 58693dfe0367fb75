"""Training zip checks: every bad zip is refused, with every problem named at once."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from engine.image.settings import ZipLimits
from engine.image.zipcheck import inspect_zip, load_examples
from tests.engine.image.zips import build_zip, good_zip, image_bytes, write

pytestmark = pytest.mark.no_database

LIMITS = ZipLimits(min_side=32, max_uncompressed_bytes=20 * 1024 * 1024)


def test_a_good_zip_passes_with_captions_and_reports_what_it_ignored(tmp_path: Path) -> None:
    report = inspect_zip(write(tmp_path, good_zip(5)), LIMITS)
    assert report.ok, report.problems
    assert [i.name for i in report.images] == [
        f"set/img{i}.{e}" for i, e in enumerate(["png", "jpg", "webp", "png", "jpg"])
    ]
    assert report.images[0].caption == "a blue disc number 0"
    assert report.images[1].caption is None
    assert report.ignored == ("set/notes.md",)
    examples = load_examples(tmp_path / "set.zip", report, "tadz")
    assert [e.caption for e in examples[:2]] == ["tadz, a blue disc number 0", "tadz"]
    assert examples[2].image.mode == "RGB" and examples[2].image.size == (48, 48)


def test_zip_slip_absolute_paths_and_links_are_refused(tmp_path: Path) -> None:
    entries = {f"img{i}.png": image_bytes(i) for i in range(4)}
    entries["../evil.png"] = image_bytes(9)
    entries["a/../../evil2.png"] = image_bytes(9)
    entries["/etc/evil3.png"] = image_bytes(9)
    entries["link.png"] = b"/etc/passwd"
    report = inspect_zip(write(tmp_path, build_zip(entries, links=("link.png",))), LIMITS)
    assert not report.ok
    text = " | ".join(report.problems)
    assert "'../evil.png': unsafe path" in text
    assert "'a/../../evil2.png': unsafe path" in text
    assert "'/etc/evil3.png': unsafe path" in text
    assert "'link.png': links are not accepted" in text
    # The four good images still count: the only problems are the bad entries.
    assert len(report.problems) == 4


def test_a_zip_bomb_is_refused_before_anything_is_unpacked(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(4):
            zf.writestr(f"img{i}.png", image_bytes(i))
        zf.writestr("zeros.png", b"\0" * (30 * 1024 * 1024))
    report = inspect_zip(write(tmp_path, buf.getvalue()), LIMITS)
    assert not report.ok
    text = " | ".join(report.problems)
    assert "unpacks to" in text and "compression ratio" in text
    assert report.images == ()


def test_a_lying_header_is_caught_while_reading(tmp_path: Path) -> None:
    data = bytearray(build_zip({f"img{i}.png": image_bytes(i) for i in range(4)}))
    # Shrink the declared size of the first entry in its central directory record.
    first_cd = data.find(b"PK\x01\x02")
    size_at = first_cd + 24  # "uncompressed size" field of the record
    data[size_at : size_at + 4] = (10).to_bytes(4, "little")
    report = inspect_zip(write(tmp_path, bytes(data)), LIMITS)
    assert not report.ok
    assert any("img0.png" in p for p in report.problems)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ({f"img{i}.png": image_bytes(i) for i in range(3)}, "3 usable image(s)"),
        ({f"img{i}.png": image_bytes(i) for i in range(51)}, "51 images; at most 50"),
        ({"a.txt": b"hello", "b.md": b"x"}, "0 usable image(s)"),
    ],
)
def test_too_few_or_too_many_images(tmp_path: Path, entries: dict, expected: str) -> None:
    report = inspect_zip(write(tmp_path, build_zip(entries)), LIMITS)
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems


def test_files_named_like_images_that_are_not_images_are_named(tmp_path: Path) -> None:
    entries = {f"img{i}.png": image_bytes(i) for i in range(4)}
    entries["fake.jpg"] = b"this is text, not a jpeg"
    entries["truncated.png"] = image_bytes(5)[:60]
    entries["gif.png"] = _gif()
    entries["tiny.png"] = image_bytes(6, size=8)
    report = inspect_zip(write(tmp_path, build_zip(entries)), LIMITS)
    text = " | ".join(report.problems)
    assert "'fake.jpg': it does not decode" in text
    assert "'truncated.png': it does not decode" in text
    assert "'gif.png': it is GIF, not jpg, png or webp" in text
    assert "'tiny.png': it is 8x8; each side needs at least 32 px" in text
    assert len(report.images) == 4


def test_not_a_zip_at_all(tmp_path: Path) -> None:
    report = inspect_zip(write(tmp_path, b"PK\x03\x04 certainly not a zip"), LIMITS)
    assert not report.ok
    assert "not a readable zip file" in report.problems[0]
    assert "not a readable zip file" in report.summary()


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    entries = {"../x.png": image_bytes(0), "bad.webp": b"nope", "ok.png": image_bytes(1)}
    report = inspect_zip(write(tmp_path, build_zip(entries)), LIMITS)
    summary = report.summary()
    for part in ("unsafe path", "'bad.webp': it does not decode", "1 usable image(s)"):
        assert part in summary


def _gif() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (1, 2, 3)).save(buf, format="GIF")
    return buf.getvalue()
