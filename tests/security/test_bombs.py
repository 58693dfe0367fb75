"""Decompression bombs cost bounded memory and are named with their reason; good images go on.

Reproduced first: six 13000x13000 palette PNGs (kilobytes zipped) passed the engine's zip
check and were decoded whole at training; the bot's check read every entry in full and
let Pillow's DecompressionBombError escape ("Something went wrong"), losing the good
images. Around them, the family (tests/security/bombs.py): large JPEG/WebP/GIF frames,
headers that lie, animations, many entries, zips in zips, entry sizes that lie. Memory
is measured in a child process per case (bench/hostile.py), not assumed.
"""

from __future__ import annotations

import io
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import simcord
from fastapi import FastAPI
from PIL import Image
from pydantic import SecretStr

from bench.hostile import TARGET_MB, run_child
from bot.app import BotServices
from bot.media import MAX_KEPT_SIDE, build_image_set, inspect_zip
from bot.store import LinkedVia
from engine.image.settings import ZipLimits
from engine.image.zipcheck import inspect_zip as engine_inspect_zip
from engine.image.zipcheck import load_examples
from engine.settings import EngineSettings, JobSettings
from tests.conftest import make_settings, register, running_engine
from tests.engine.image.zips import image_bytes
from tests.security import bombs
from tests.waiting import CEILING_S

pytestmark = pytest.mark.slow(90)

LIMITS = ZipLimits()

# case -> what the engine's check says about it ("ok": accepted, decoded at bounded cost).
ENGINE_OUTCOMES = {
    "six 13000x13000 palette PNGs": "'set/bomb0.png': it is 13000x13000 (169 megapixels)",
    "palette PNG 9000x9000": "it is 9000x9000 (81 megapixels); at most 50",
    "RGB PNG 7000x7000 (accepted, at the pixel bound)": "ok",
    "RGBA PNG 6800x6800": "'set/b.png': it is 6800x6800 PNG, which takes about",
    "RGBA PNG 4800x4800 (accepted, at the decode bound)": "ok",
    "RGBA PNG declaring 30000x30000": "'set/b.png': it declares more than 179 megapixels",
    "JPEG declaring 60000x60000": "'set/b.jpg': it declares more than 179 megapixels",
    "real JPEG 7000x7000": "ok",
    "progressive JPEG 7000x7000": "MB to decode; at most 192 MB",
    "WebP declaring 16384x16384": "'set/b.webp': it declares more than 179 megapixels",
    "real WebP 6000x6000": "'set/b.webp': it is 6000x6000 WEBP, which takes about",
    "GIF declaring 65535x65535": "ok",  # a .gif is not a training image: ignored, never read
    "APNG declaring 1000000 frames": "it is an animation of 1000000 frames; at most 100",
    "animated GIF (~500 frames)": "ok",
    "animated WebP": "ok",
    "1 GiB of zeros in one entry": "unpacks to",
    "200000 entries": "200004 entries; at most 2000 are accepted",
    "zips in zips (5 deep, 10 wide)": "'set/more.zip': zips or archives inside the zip",
    "2000-deep directories": "ok",
    "entry declaring 1 KiB, inflating to 256 MiB": "'set/zeros.png': it holds more data than",
}


@pytest.fixture(scope="module")
def zips() -> dict[str, tuple[str, bytes]]:
    return bombs.bomb_zips()


def write(tmp: Path, data: bytes) -> Path:
    path = tmp / "set.zip"
    path.write_bytes(data)
    return path


@pytest.mark.no_database
def test_the_engine_check_names_every_bomb_with_its_reason(
    zips: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    assert set(zips) == set(ENGINE_OUTCOMES)
    for name, (_, data) in zips.items():
        report = engine_inspect_zip(write(tmp_path, data), LIMITS)
        expected = ENGINE_OUTCOMES[name]
        if expected == "ok":
            assert report.ok, (name, report.problems)
        else:
            assert not report.ok, name
            assert expected in report.summary(), (name, report.summary())


@pytest.mark.no_database
def test_the_bots_check_leaves_each_bomb_out_with_its_reason_and_keeps_the_good_images(
    zips: dict[str, tuple[str, bytes]],
) -> None:
    refused_whole = {
        "1 GiB of zeros in one entry": "unpacks to 1024 MB; the bot takes at most 512 MB",
        "200000 entries": "200004 entries; the bot takes at most 2000",
    }
    for name, (_, data) in zips.items():
        if name in refused_whole:
            with pytest.raises(Exception, match=refused_whole[name]):
                inspect_zip(data)
            continue
        got = inspect_zip(data)
        assert set(bombs.good_images()) <= set(got.kept), (name, got.kept, got.refused)
        reasons = {r.name: r.reason for r in got.refused}
        kept_bomb = [k for k in got.kept if k not in bombs.good_images()]
        # Every other entry is either kept (decoded at bounded size) or left out with why.
        assert all(reasons.values()), (name, reasons)
        assert kept_bomb or reasons, name


@pytest.mark.no_database
def test_the_bots_reasons_for_the_worst_bombs(zips: dict[str, tuple[str, bytes]]) -> None:
    expected = {
        "six 13000x13000 palette PNGs": ("set/bomb3.png", "it is 13000x13000 (169 megapixels)"),
        "RGBA PNG declaring 30000x30000": ("set/b.png", "it declares more than 179 megapixels"),
        "JPEG declaring 60000x60000": ("set/b.jpg", "it declares more than 179 megapixels"),
        "GIF declaring 65535x65535": ("set/b.gif", "it declares more than 179 megapixels"),
        "APNG declaring 1000000 frames": ("set/b.png", "animation of 1000000 frames"),
        "animated GIF (~500 frames)": ("set/b.gif", "frames; at most 100 are accepted"),
        "progressive JPEG 7000x7000": ("set/b.jpg", "MB to decode"),
        "zips in zips (5 deep, 10 wide)": ("set/more.zip", "zips inside the zip are not taken"),
        "entry declaring 1 KiB, inflating to 256 MiB": ("set/zeros.png", "could not be"),
    }
    for case, (entry, reason) in expected.items():
        got = inspect_zip(zips[case][1])
        reasons = {r.name: r.reason for r in got.refused}
        assert reason in reasons.get(entry, ""), (case, reasons)
        assert len(got.kept) == 4, (case, got.kept)


@pytest.mark.no_database
def test_a_big_photo_is_kept_at_a_bounded_size_and_trained_at_the_training_size(
    zips: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    data = zips["real JPEG 7000x7000"][1]
    got = inspect_zip(data)
    assert "set/b.jpg" in got.kept
    with zipfile.ZipFile(io.BytesIO(got.zip_bytes)) as archive:
        sizes = [Image.open(io.BytesIO(archive.read(n))).size for n in archive.namelist()]
    assert (MAX_KEPT_SIDE, MAX_KEPT_SIDE) in sizes
    path = write(tmp_path, data)
    report = engine_inspect_zip(path, LIMITS)
    examples = load_examples(path, report, "tadz", short_side=64, limits=LIMITS)
    assert sorted(e.image.size for e in examples)[-1] == (64, 64)
    assert all(min(e.image.size) == 64 for e in examples)


@pytest.mark.no_database
def test_bomb_attachments_are_left_out_and_the_good_ones_kept() -> None:
    files = [
        ("good0.png", image_bytes(0, 320)),
        ("bomb.png", bombs.palette_png(13000)),
        ("huge.jpg", bombs.jpeg_declaring(60000, 60000)),
        ("anim.png", bombs.apng(1_000_000)),
        ("good1.png", image_bytes(1, 320)),
    ]
    got = build_image_set(files)
    assert got.kept == ("good0.png", "good1.png")
    reasons = {r.name: r.reason for r in got.refused}
    assert reasons["bomb.png"].startswith("it is 13000x13000 (169 megapixels)")
    assert reasons["huge.jpg"] == "it declares more than 179 megapixels"
    assert reasons["anim.png"].startswith("it is an animation of 1000000 frames")


@pytest.mark.no_database
def test_zip_paths_with_dot_dot_are_listed_as_left_out() -> None:
    good = {f"set/good{i}.png": image_bytes(i, 320) for i in range(4)}
    data = bombs.zip_of(
        {
            **good,
            "../../evil.png": image_bytes(7, 320),
            "..\\..\\evil2.png": image_bytes(8, 320),
            "set/../../evil3.png": image_bytes(9, 320),
            "/etc/evil4.png": image_bytes(10, 320),
            "set/.hidden.png": image_bytes(11, 320),
        }
    )
    got = inspect_zip(data)
    assert got.kept == tuple(good)
    reasons = {r.name: r.reason for r in got.refused}
    for name in ("../../evil.png", "..\\..\\evil2.png", "set/../../evil3.png", "/etc/evil4.png"):
        assert reasons.get(name) == "unsafe path (absolute or with '..')", (name, reasons)
    assert "set/.hidden.png" not in reasons  # a desktop tool's hidden file: skipped quietly


@pytest.mark.no_database
def test_the_engine_check_names_dot_dot_entries_and_a_bomb_among_good_images(
    tmp_path: Path,
) -> None:
    good = bombs.good_images()
    data = bombs.zip_of(
        {
            **good,
            "..\\..\\evil.png": image_bytes(7, 320),
            "set/../../evil2.png": image_bytes(8, 320),
            "set/bomb.png": bombs.palette_png(13000),
        }
    )
    report = engine_inspect_zip(write(tmp_path, data), LIMITS)
    assert [i.name for i in report.images] == list(good)  # the good ones still count
    summary = report.summary()
    assert "'..\\\\..\\\\evil.png': unsafe path" in summary, summary
    assert "'set/../../evil2.png': unsafe path" in summary
    assert "'set/bomb.png': it is 13000x13000 (169 megapixels)" in summary
    assert len(report.problems) == 3


@pytest.mark.no_database
def test_an_entry_that_cannot_be_unpacked_is_left_out_not_a_crash(tmp_path: Path) -> None:
    good = bombs.good_images()
    data = bytearray(bombs.zip_of({**good, "set/odd.png": image_bytes(7, 320)}))
    # Give the last entry an unknown compression method (99: AES) in both of its headers.
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = data.rfind(signature)
        data[at + offset : at + offset + 2] = (99).to_bytes(2, "little")
    got = inspect_zip(bytes(data))
    assert got.kept == tuple(good)
    assert {r.name: r.reason for r in got.refused} == {
        "set/odd.png": "could not be unpacked from the zip"
    }
    report = engine_inspect_zip(write(tmp_path, bytes(data)), LIMITS)
    assert "'set/odd.png': it does not unpack" in report.summary()


# -- through the engine's API ------------------------------------------------------------


@pytest.fixture
async def lora_engine(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = make_settings(tmp_path / "engine", image={"zip": {"min_side": 32}})
    async with running_engine(settings) as pair:
        yield pair


async def test_the_put_refuses_six_palette_bombs_and_says_which(
    lora_engine: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    from tests.security.test_inputs import target, upload_url

    _, api = lora_engine
    key = await register(api)
    body = await upload_url(api, key)
    resp = await api.put(
        target(body), content=bombs.six_palette_bombs_zip(), headers=body["headers"]
    )
    assert resp.status_code == 400, resp.text
    detail = resp.json()["detail"]
    for i in range(6):
        assert f"'set/bomb{i}.png': it is 13000x13000 (169 megapixels)" in detail, detail


# -- memory, measured ----------------------------------------------------------------------

WORST = [
    ("six 13000x13000 palette PNGs", "engine-put"),
    ("six 13000x13000 palette PNGs", "bot-check"),
    ("1 GiB of zeros in one entry", "bot-check"),
    ("200000 entries", "bot-check"),
    ("200000 entries", "engine-put"),
    ("entry declaring 1 KiB, inflating to 256 MiB", "bot-check"),
    ("real JPEG 7000x7000", "engine-train"),
    # The largest images accepted: what decoding one really costs.
    ("RGB PNG 7000x7000 (accepted, at the pixel bound)", "engine-put"),
    ("RGB PNG 7000x7000 (accepted, at the pixel bound)", "bot-check"),
    ("RGBA PNG 4800x4800 (accepted, at the decode bound)", "engine-train"),
]


@pytest.mark.no_database
def test_the_worst_bombs_cost_under_the_memory_target(
    zips: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    """Each in its own process (bench/hostile.py's child), so that growth is its own."""
    assert sys.platform.startswith("linux")
    for case, stage in WORST:
        path = tmp_path / "bomb.zip"
        path.write_bytes(zips[case][1])
        got = run_child(stage, path, kill_mb=1500, timeout=120)
        growth = got["peak_rss_growth_mb"]
        assert growth is not None, (case, stage, got)
        assert growth < TARGET_MB, (case, stage, got)
        if stage == "engine-train":
            # The images the check accepts are trained on, decoded whole: that is the cost
            # measured (a training refused before it decodes would measure nothing).
            assert got["outcome"].startswith("training succeeded"), (case, got)


# -- through the bot, as a member sees it -------------------------------------------------


@pytest.fixture
def engine_settings(tmp_path: Path) -> EngineSettings:
    return make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image={"zip": {"min_side": 32}},
    )


@pytest.mark.simcord(settle_timeout=120)
async def test_a_bomb_among_good_images_is_listed_on_the_contact_sheet_and_the_rest_upload(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    key = await register(api, "alice@example.com")
    await services.members.save(alice.id, SecretStr(key), via=LinkedVia.LINK)
    data = bombs.zip_of(
        {
            **bombs.good_images(),
            "set/bomb.png": bombs.rgba_png_header_only(30000, 30000),
            "set/big.png": bombs.palette_png(13000),
            "../escape.png": image_bytes(9, 320),
        }
    )
    up = await alice.slash(
        channel, "lora upload", name="Mixed", trigger_word="tadz", images=("set.zip", data)
    )
    sheet = up.followups[-1]
    assert "4 image(s) uploaded" in sheet.content, sheet.content
    assert "Something went wrong" not in sheet.content
    assert "`set/bomb.png`: it declares more than 179 megapixels" in sheet.content
    assert "`set/big.png`: it is 13000x13000 (169 megapixels)" in sheet.content
    assert "`../escape.png`: unsafe path" in sheet.content
    assert sheet.attachments and sheet.attachments[0].filename == "contact-sheet.png"
    uploads = (await api.get("/api/loras/uploads", headers={"X-API-Key": key})).json()
    assert [u["status"] for u in uploads] == ["uploaded"]
