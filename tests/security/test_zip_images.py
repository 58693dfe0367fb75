"""Issue 24, items 2 and 3: zip directories that disagree, images that cost more than
their header says. Each shape was reproduced on the unchanged code (memory and CPU
measured over the whole process tree, confined decoders included); here each is refused
fast, named, and bounded.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

import bot.media
from bot.media import MediaRejected, build_image_set
from bot.media import inspect_zip as bot_inspect_zip
from engine.image.settings import ZipLimits
from engine.image.untrusted import ImageBounds, ImageRefused
from engine.image.zipcheck import ZipImage, ZipReport, inspect_zip, load_examples
from tests.conftest import make_settings, register, running_engine
from tests.security import image_hostile as hostile

LIMITS = ZipLimits(min_side=32)
# What a refused input may cost the whole process tree.
BOUND_MB = 120


def _refusal(path: Path, limits: ZipLimits = LIMITS) -> str:
    report = inspect_zip(path, limits)
    assert not report.ok, report
    return " | ".join(report.problems)


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    """The forkserver (and Pillow's plugins) started before any baseline is taken."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = hostile.zip_file(Path(tmp) / "w.zip", hostile.good_entries())
        inspect_zip(path, LIMITS)
    Image.init()


# -- item 2: end records that disagree --------------------------------------------------

DIRECTORIES = {
    "zip64 record disagrees with the plain one": hostile.zip64_disagreeing,
    "plain record's offset spells a signature": hostile.signature_in_fields,
}


@pytest.mark.no_database
@pytest.mark.parametrize("shape", list(DIRECTORIES))
def test_a_directory_the_end_records_disagree_on_is_refused_before_it_is_parsed(
    shape: str, tmp_path: Path
) -> None:
    data = DIRECTORIES[shape]()
    path = tmp_path / "d.zip"
    path.write_bytes(data)
    with hostile.TreePeak() as engine:
        text = _refusal(path)
    assert "entries" in text or "directory" in text or "end records" in text, text
    with hostile.TreePeak() as bot, pytest.raises(MediaRejected):
        bot_inspect_zip(data)
    for side, got in (("engine", engine), ("bot", bot)):
        assert got.growth_mb < BOUND_MB, (side, got.growth_mb)
        assert got.seconds < 10, (side, got.seconds)


@pytest.mark.no_database
def test_a_huge_caption_is_read_no_further_than_its_bound(tmp_path: Path) -> None:
    path = hostile.write_caption_zip(tmp_path / "c.zip", caption_mib=128)
    with hostile.TreePeak() as got:
        text = _refusal(path)
    assert "'set/good0.txt': caption longer than 1000 chars" in text, text
    assert got.growth_mb < BOUND_MB, got.growth_mb
    assert got.seconds < 10, got.seconds


# -- item 3: images that cost more than their header says --------------------------------


@pytest.fixture(scope="module")
def metadata_zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("meta")
    return {
        "png": hostile.write_metadata_zip(tmp / "png.zip", "png", 450),
        "jpg": hostile.write_metadata_zip(tmp / "jpg.zip", "jpg", 200),
        "webp": hostile.write_metadata_zip(tmp / "webp.zip", "webp", 200),
    }


@pytest.mark.no_database
@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_metadata_blocks_of_hundreds_of_megabytes_are_refused_unread(
    fmt: str, metadata_zips: dict[str, Path]
) -> None:
    path = metadata_zips[fmt]
    with hostile.TreePeak() as engine:
        text = _refusal(path)
    assert f"'set/meta.{fmt}'" in text, text
    assert "good0" not in text, text
    # The bot refuses entries past 100 MB unread: its metadata walk is shown under that.
    small = hostile.write_metadata_zip(path.with_name(f"small-{fmt}.zip"), fmt, 64)
    data = small.read_bytes()
    with hostile.TreePeak() as bot:
        image_set = bot_inspect_zip(data)
    reasons = {r.name: r.reason for r in image_set.refused}
    assert "metadata" in reasons.get(f"set/meta.{fmt}", ""), reasons
    assert len(image_set.kept) == 4
    for side, got in (("engine", engine), ("bot", bot)):
        assert got.growth_mb < BOUND_MB, (side, got.growth_mb)


@pytest.mark.no_database
def test_an_la_png_is_costed_at_the_four_bytes_a_pixel_pillow_stores(tmp_path: Path) -> None:
    la = hostile.la_png(7000)
    path = hostile.zip_file(tmp_path / "la.zip", {**hostile.good_entries(), "set/la.png": la})
    with hostile.TreePeak() as engine:
        text = _refusal(path)
    assert "'set/la.png': it is 7000x7000 PNG, which takes about" in text, text
    with hostile.TreePeak() as bot:
        image_set = build_image_set([("la.png", la), ("ok.png", hostile.image_bytes(1, 320))])
    assert [r.name for r in image_set.refused] == ["la.png"], image_set.refused
    assert "MB to decode" in image_set.refused[0].reason
    for side, got in (("engine", engine), ("bot", bot)):
        assert got.growth_mb < BOUND_MB, (side, got.growth_mb)


@pytest.mark.no_database
def test_a_progressive_jpeg_that_repeats_its_scans_is_stopped_at_the_cpu_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jpeg = hostile.repeated_scans_jpeg()
    entries = {**hostile.good_entries(), "set/scans.jpg": jpeg}
    path = hostile.zip_file(tmp_path / "s.zip", entries)
    limits = ZipLimits(min_side=32, decode_cpu_seconds=2)
    with hostile.TreePeak() as engine:
        text = _refusal(path, limits)
    assert "'set/scans.jpg'" in text and "CPU" in text, text
    assert engine.cpu < 8, engine.cpu
    monkeypatch.setattr(bot.media, "IMAGE_BOUNDS", ImageBounds(cpu_seconds=2))
    with hostile.TreePeak() as got:
        image_set = build_image_set([("scans.jpg", jpeg), ("ok.png", hostile.image_bytes(1, 320))])
    assert [r.name for r in image_set.refused] == ["scans.jpg"]
    assert "CPU" in image_set.refused[0].reason
    assert got.cpu < 8, got.cpu
    # Training reads the images again, each confined as well.
    report = ZipReport((ZipImage("set/scans.jpg", 7000, 7000, None),), (), ())
    with pytest.raises(ImageRefused, match="CPU"):
        load_examples(path, report, "tadz", short_side=512, limits=limits)


@pytest.mark.no_database
def test_a_jpeg_of_hundreds_of_scans_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    jpeg = hostile.repeated_scans_jpeg(4000, 600)  # ~120 KB, ~10 s of CPU decoded
    path = hostile.zip_file(tmp_path / "s.zip", {**hostile.good_entries(), "set/s.jpg": jpeg})
    with hostile.TreePeak() as got:
        text = _refusal(path)
    assert "'set/s.jpg': it is a progressive JPEG of more than 100 scans" in text, text
    assert got.cpu < 3, got.cpu


@pytest.mark.no_database
def test_an_extreme_aspect_ratio_is_refused(tmp_path: Path) -> None:
    wide = hostile.wide_png()
    path = hostile.zip_file(tmp_path / "w.zip", {**hostile.good_entries(), "set/wide.png": wide})
    text = _refusal(path)
    assert "'set/wide.png'" in text and "1:8" in text, text
    image_set = build_image_set([("wide.png", wide), ("ok.png", hostile.image_bytes(1, 320))])
    assert [r.name for r in image_set.refused] == ["wide.png"]
    assert "1:8" in image_set.refused[0].reason


@pytest.mark.no_database
def test_training_crops_before_it_resizes_and_never_upscales_past_the_bucket() -> None:
    from engine.image.pipeline import _cover_crop

    long = Image.new("RGB", (32768, 256), (1, 2, 3))
    with hostile.TreePeak() as got:
        fitted, top, left = _cover_crop(long, 1024, 1024)
    assert fitted.size == (1024, 1024)
    assert (top, left) == (0, (32768 * 4 - 1024) // 2)
    assert got.growth_mb < 100, got.growth_mb


@pytest.mark.no_database
def test_too_many_images_are_refused_before_any_is_decoded(tmp_path: Path) -> None:
    # Four good images and four that only a decode finds damaged: eight candidates.
    entries = {
        **hostile.good_entries(),
        **{f"set/bad{i}.png": hostile.truncated_png(i) for i in range(4)},
    }
    path = hostile.zip_file(tmp_path / "n.zip", entries)
    text = _refusal(path, ZipLimits(min_side=32, min_images=1, max_images=4))
    assert "8 images; at most 4 are accepted" in text, text
    assert "does not decode" not in text, text  # nothing was decoded
    # The declared pixels of the set, too: refused from the headers.
    text = _refusal(path, ZipLimits(min_side=32, max_set_pixels=300_000))
    assert "megapixels in all" in text, text
    assert "does not decode" not in text, text


@pytest.mark.no_database
def test_the_bot_decodes_no_more_candidates_than_a_set_may_hold() -> None:
    files = [("ok.png", hostile.image_bytes(1, 320))]
    files += [(f"bad{i}.png", hostile.truncated_png(i)) for i in range(55)]
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as zf:
        for name, blob in files:
            zf.writestr(name, blob)
    image_set = bot_inspect_zip(data.getvalue())
    reasons = {r.name: r.reason for r in image_set.refused}
    assert image_set.kept == ("ok.png",)
    over = [n for n, r in reasons.items() if "more than 50 images" in r]
    assert over == [f"bad{i}.png" for i in range(49, 55)], reasons


# -- through the engine's PUT: a 400 with the reason, never a 500 ----------------------


@pytest.fixture
async def lora_engine(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = make_settings(tmp_path / "engine", image={"zip": {"min_side": 32}})
    async with running_engine(settings) as pair:
        yield pair


def _hostile_puts(tmp: Path) -> Iterator[tuple[str, bytes, str]]:
    yield "zip64", hostile.zip64_disagreeing(100_000), "end records disagree"
    la = hostile.zip_file(
        tmp / "la.zip", {**hostile.good_entries(), "set/la.png": hostile.la_png()}
    )
    yield "la", la.read_bytes(), "'set/la.png'"
    meta = hostile.write_metadata_zip(tmp / "m.zip", "png", 64)
    yield "meta", meta.read_bytes(), "'set/meta.png'"


async def test_the_put_answers_each_with_a_400_that_names_it(
    lora_engine: tuple[FastAPI, httpx.AsyncClient], tmp_path: Path
) -> None:
    from tests.security.test_inputs import target, upload_url

    _, api = lora_engine
    key = await register(api)
    for shape, data, named in _hostile_puts(tmp_path):
        body = await upload_url(api, key)
        resp = await api.put(target(body), content=data, headers=body["headers"])
        assert resp.status_code == 400, (shape, resp.text)
        assert named in resp.json()["detail"], (shape, resp.text)
