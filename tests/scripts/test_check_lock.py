"""scripts/check_lock.py: the lock is checked against the public index's metadata only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.scripts.loading import ROOT, load_script

check_lock = load_script("check_lock")

# What PyPI lists for torch 2.13.0 (PyPI's Linux wheel is the CUDA build, with no label).
TORCH_FILES = [
    f"torch-2.13.0-cp3{minor}-cp3{minor}-{platform}.whl"
    for platform in ("manylinux_2_28_x86_64", "manylinux_2_28_aarch64", "macosx_14_0_arm64")
    for minor in (11, 12, 13)
] + ["torch-2.12.1-cp311-cp311-manylinux_2_28_x86_64.whl"]


def page(*filenames: str, requires_python: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "files": [
            {"filename": name, "requires-python": requires_python, **extra} for name in filenames
        ]
    }


def fake_index(pages: dict[str, dict[str, Any]]) -> Any:
    def fetch(name: str) -> dict[str, Any]:
        return pages.get(name.lower(), {"files": []})

    return fetch


def test_a_local_build_label_is_not_on_the_public_index() -> None:
    # torch==2.13.0+cpu installed here (a local wheel) but exists nowhere else.
    problems = check_lock.check_lock(
        ["torch==2.13.0+cpu"], fake_index({"torch": page(*TORCH_FILES)})
    )
    assert len(problems) == 1
    assert "torch==2.13.0+cpu: not on the public index" in problems[0]
    assert "pin 2.13.0 instead" in problems[0]


def test_the_public_version_resolves_everywhere() -> None:
    assert check_lock.check_lock(["torch==2.13.0"], fake_index({"torch": page(*TORCH_FILES)})) == []


def test_a_missing_version_is_named_with_its_line() -> None:
    problems = check_lock.check_lock(
        ["# a comment", "", "torch==2.13.0", "numpy==9.9.9"],
        fake_index(
            {
                "torch": page(*TORCH_FILES),
                "numpy": page("numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl"),
            }
        ),
    )
    assert problems == ["line 4: numpy==9.9.9: not on the public index (latest there: 2.4.6)"]


def test_a_platform_without_a_wheel_or_source_is_reported() -> None:
    pages = {"onlylinux": page("onlylinux-1.0-cp311-abi3-manylinux_2_17_x86_64.whl")}
    problems = check_lock.check_lock(["onlylinux==1.0"], fake_index(pages))
    assert problems
    assert all("onlylinux==1.0: no wheel or source archive installs on" in p for p in problems)
    assert any("macOS arm64" in p for p in problems)
    assert any("Linux aarch64" in p for p in problems)
    assert not any("Linux x86_64" in p for p in problems)


def test_a_source_archive_installs_anywhere_and_yanked_files_do_not_count() -> None:
    pages = {
        "webrtcvad": page("webrtcvad-2.0.10.tar.gz"),
        "gone": page("gone-1.0-py3-none-any.whl", yanked=True),
    }
    problems = check_lock.check_lock(["webrtcvad==2.0.10", "gone==1.0"], fake_index(pages))
    assert problems == ["line 2: gone==1.0: not on the public index"]


def test_requires_python_is_respected() -> None:
    pages = {"new": page("new-1.0-py3-none-any.whl", requires_python=">=3.12")}
    problems = check_lock.check_lock(["new==1.0"], fake_index(pages))
    assert any("Python 3.11" in p for p in problems)
    assert not any("Python 3.12" in p for p in problems)


def test_lines_that_are_not_exact_pins_are_problems() -> None:
    problems = check_lock.check_lock(["torch>=2", "not a pin!"], fake_index({}))
    assert len(problems) == 2


def test_the_repository_lock_has_no_local_build_labels() -> None:
    # Offline guard of the CI check (scripts/check.sh runs the index check itself).
    pins, problems = check_lock.read_pins((ROOT / "constraints.txt").read_text().splitlines())
    assert problems == []
    labelled = [f"{p.name}=={p.version}" for p in pins if "+" in p.version]
    assert labelled == []


@pytest.mark.parametrize("index", ["http://127.0.0.1:9/simple"])
def test_an_unreachable_index_is_not_a_lock_problem(index: str, tmp_path: Path) -> None:
    lock = tmp_path / "constraints.txt"
    lock.write_text("torch==2.13.0\n")
    assert check_lock.main([str(lock), "--index-url", index, "--timeout", "2"]) == 2
