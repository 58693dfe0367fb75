"""A missing non-Python prerequisite (Chromium, the voice evaluation data) is said plainly:
which tests skip, why, and the command per platform; under CI=true it fails (issue 25)."""

from __future__ import annotations

import pytest

from tests import prerequisites
from tests.prerequisites import MISSING, Prerequisite

pytest_plugins = ["pytester"]

CONFTEST = "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport\n"
TESTS = f"""
import pytest

def test_needs_it():
    pytest.skip("{MISSING} a thing (no /nowhere)")

@pytest.mark.skipif(True, reason="{MISSING} another thing (no /elsewhere)")
def test_marked():
    pass

def test_other_skip():
    pytest.skip("nothing to do with prerequisites")

def test_fine():
    pass
"""


@pytest.mark.parametrize("ci", ["", "false", "0"])
def test_outside_ci_a_missing_prerequisite_skips_with_its_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(TESTS)
    result = pytester.runpytest("-ra")
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines([f"*{MISSING} a thing (no /nowhere)*"])


def test_in_ci_a_missing_prerequisite_fails_and_other_skips_stay_skips(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(TESTS)
    result = pytester.runpytest("-ra")
    # (a skip at set-up, a skipif mark's, becomes an error: a failure all the same)
    result.assert_outcomes(passed=1, skipped=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            f"*CI is set: a missing prerequisite fails the run. {MISSING} a thing*",
            f"*CI is set: a missing prerequisite fails the run. {MISSING} another thing*",
        ]
    )
    assert result.ret != 0


def test_in_ci_a_module_skipped_at_collection_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "1")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        f'import pytest\npytest.skip("{MISSING} x (no y)", allow_module_level=True)\n'
        "def test_a():\n    pass\n"
    )
    result = pytester.runpytest()
    assert result.ret != 0
    result.stdout.fnmatch_lines([f"*{MISSING} x (no y)*"])


def _never_installed(key: str = "thing") -> Prerequisite:
    return Prerequisite(
        key=key,
        title="the thing",
        tests="tests/test_thing.py (what it proves)",
        debian_packages=("thing-data",),
        install={"Debian/Ubuntu": "sudo apt-get install thing-data", "macOS": "brew install x"},
        find_missing=lambda: "no /usr/share/thing",
    )


def test_make_outside_ci_says_what_skips_and_how_to_install_it_and_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(prerequisites, "apt_install", lambda _: "apt-get needs root")
    said: list[str] = []
    assert prerequisites.install(_never_installed(), out=said.append) == 0
    text = "\n".join(said)
    assert "the thing is missing: no /usr/share/thing; apt-get needs root." in text
    assert "Skipped without it: tests/test_thing.py (what it proves)." in text
    assert "Debian/Ubuntu: sudo apt-get install thing-data" in text
    assert "macOS:         brew install x" in text


def test_make_in_ci_fails_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(
        prerequisites, "apt_install", lambda _: "`apt-get install` failed (exit 100): E: lock"
    )
    said: list[str] = []
    assert prerequisites.install(_never_installed(), out=said.append) == 1
    text = "\n".join(said)
    assert "no /usr/share/thing; `apt-get install` failed (exit 100): E: lock" in text
    assert "CI is set (true): a missing prerequisite fails the run." in text


def test_an_installed_prerequisite_needs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    calls: list[object] = []
    monkeypatch.setattr(prerequisites, "apt_install", calls.append)
    done = Prerequisite("ok", "ok", "none", ("x",), {"any": "none"}, lambda: None)
    assert prerequisites.install(done, out=calls.append) == 0
    assert calls == [] and done.skip_reason() is None


def test_apt_get_is_only_tried_as_root_on_debian(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prerequisites.shutil, "which", lambda _: None)
    assert prerequisites.apt_install(("x",)) == "this system has no apt-get (not Debian or Ubuntu)"
    monkeypatch.setattr(prerequisites.shutil, "which", lambda _: "/usr/bin/apt-get")
    monkeypatch.setattr(prerequisites.os, "geteuid", lambda: 1000)
    assert prerequisites.apt_install(("x",)) == "apt-get needs root and this is not root"


def test_apt_get_waits_for_the_package_lock_a_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[list[str]] = []

    def fake_run(args: list[str], **_: object) -> object:
        seen.append(args)
        return prerequisites.subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(prerequisites.shutil, "which", lambda _: "/usr/bin/apt-get")
    monkeypatch.setattr(prerequisites.os, "geteuid", lambda: 0)
    monkeypatch.setattr(prerequisites.subprocess, "run", fake_run)
    assert prerequisites.apt_install(("flite",)) is None
    assert seen[0][:4] == ["apt-get", "-o", "DPkg::Lock::Timeout=120", "install"]
    assert seen[0][-1] == "flite"


def test_ci_values() -> None:
    assert prerequisites.in_ci({"CI": "true"}) and prerequisites.in_ci({"CI": "1"})
    assert not prerequisites.in_ci({}) and not prerequisites.in_ci({"CI": "false"})


def test_the_skip_reason_names_the_make_target_and_the_other_platforms() -> None:
    reason = _never_installed("thing").skip_reason()
    assert reason is not None and reason.startswith(f"{MISSING} the thing (no /usr/share/thing)")
    assert "`make thing`" in reason and "python3 -m tests.prerequisites show thing" in reason
