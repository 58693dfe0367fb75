"""The tests' non-Python prerequisites: what each is, which tests need it, how to install it.

Two are not on PyPI: Chromium (the sandbox's browser test drives a real one; Playwright's own
browser downloads are never used) and the voice evaluation's recordings and voices (Debian
packages). Both are used three ways:

* ``python3 -m tests.prerequisites install browser|voice-data`` (``make browser``, ``make
  voice-data``, both part of ``make test``): as root on Debian or Ubuntu it installs the
  packages with apt-get, waiting at most two minutes for the package lock. Otherwise, or
  when that fails, it prints why, which tests will be skipped and the command that installs
  it on each platform, and goes on; with ``CI=true`` it fails instead (exit status 1).
* In a test module, :meth:`Prerequisite.skip_reason` is the reason of its skip: it starts
  with :data:`MISSING`, names what is missing and says how to install it.
* ``tests/conftest.py`` turns such a skip into a failure under ``CI=true`` and lists, at
  the end of a run, what was skipped for want of which prerequisite.

Standard library only: ``make`` runs it with the system Python, before the virtual
environment matters.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Every skip for want of a prerequisite starts so (tests/conftest.py looks for it).
MISSING = "missing prerequisite:"
# apt-get waits this long for another apt/dpkg to let go of its lock, then fails.
APT_LOCK_TIMEOUT_S = 120
CHROMIUM_ENV = "TADA_CHROMIUM"
# Where the platforms' packages put Chromium: Debian, Fedora, Ubuntu's snap, Homebrew's cask.
CHROMIUM_PLACES = (
    Path("/usr/bin/chromium"),
    Path("/usr/bin/chromium-browser"),
    Path("/snap/bin/chromium"),
    Path("/Applications/Chromium.app/Contents/MacOS/Chromium"),
)
SPHINX_LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
# Speakers from other material (issue 26): a radio amateur on an 8 kHz USB headset
# (codec2-examples, LGPL-2.1) and Asterisk's prompts (asterisk-core-sounds-en-g722,
# CC-BY-SA-3.0): bench/voice_quality.py's extra speakers and the headset pitch test.
CODEC2_HEADSET = Path("/usr/share/codec2/raw/ve9qrp.raw")
ASTERISK_ALLISON = Path("/usr/share/asterisk/sounds/en_US_f_Allison/vm-intro.g722")
ALSA_SAMPLE = Path("/usr/share/sounds/alsa/Front_Center.wav")


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this is a CI run (``CI`` set to anything but empty, 0, false or no)."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def chromium() -> Path | None:
    """The Chromium the browser test drives: ``$TADA_CHROMIUM``, or a package's, or none."""
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        return Path(named) if Path(named).is_file() else None
    return next((p for p in CHROMIUM_PLACES if p.is_file()), None)


def _chromium_missing() -> str | None:
    if chromium() is not None:
        return None
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        return f"{CHROMIUM_ENV}={named} is not a file"
    return "no Chromium at " + ", ".join(str(p) for p in CHROMIUM_PLACES)


def _voice_data_missing() -> str | None:
    missing = [
        str(p)
        for p in (SPHINX_LIBRIVOX, ALSA_SAMPLE, CODEC2_HEADSET, ASTERISK_ALLISON)
        if not p.exists()
    ]
    if shutil.which("flite") is None:
        missing.insert(0, "flite (the program)")
    return "no " + ", ".join(missing) if missing else None


@dataclass(frozen=True)
class Prerequisite:
    """One non-Python prerequisite of some tests."""

    key: str  # the make target that installs it
    title: str
    tests: str  # which tests skip without it
    debian_packages: tuple[str, ...]
    # Platform -> the exact command that installs it there, or why none does.
    install: Mapping[str, str]
    find_missing: Callable[[], str | None] = field(repr=False)

    def missing(self) -> str | None:
        """Why it is missing (which files or programs), or None when it is installed."""
        return self.find_missing()

    def skip_reason(self, detail: str | None = None) -> str | None:
        """The reason a test skips without it (:data:`MISSING` first), or None if installed
        and no ``detail`` (a test's own finding) says otherwise."""
        why = detail or self.missing()
        if why is None:
            return None
        return (
            f"{MISSING} {self.title} ({why}); `make {self.key}` installs it as root on "
            f"Debian/Ubuntu, other platforms: python3 -m tests.prerequisites show {self.key}"
        )

    def report(self, why: str) -> str:
        """What a person reads when it is missing: why, what skips, how to install it."""
        lines = [
            f"make: {self.title} is missing: {why}.",
            f"  Skipped without it: {self.tests}.",
            "  Install it with:",
        ]
        width = max(len(platform) for platform in self.install) + 1
        lines += [f"    {p + ':':<{width}} {cmd}" for p, cmd in self.install.items()]
        return "\n".join(lines)


BROWSER = Prerequisite(
    key="browser",
    title="Chromium",
    tests="tests/sandbox/test_browser.py (the sandbox page in a real browser)",
    debian_packages=("chromium",),
    install={
        "Debian": "sudo apt-get install chromium",
        "Ubuntu": "sudo snap install chromium",
        "Fedora": "sudo dnf install chromium",
        "macOS": "brew install --cask chromium",
        "elsewhere": f"{CHROMIUM_ENV}=/path/to/chromium make test",
    },
    find_missing=_chromium_missing,
)
VOICE_DATA = Prerequisite(
    key="voice-data",
    title="the voice evaluation data",
    tests=(
        "tests/engine/voice/test_voice_quality.py (how clones sound, judged by an "
        "independent encoder; bench/voice_quality.py needs the same data)"
    ),
    debian_packages=(
        "flite",
        "pocketsphinx-testdata",
        "alsa-utils",
        "codec2-examples",
        "asterisk-core-sounds-en-g722",
    ),
    install={
        "Debian/Ubuntu": (
            "sudo apt-get install flite pocketsphinx-testdata alsa-utils codec2-examples "
            "asterisk-core-sounds-en-g722"
        ),
        "Fedora, macOS": (
            "no package puts these recordings where the test reads them (Debian's paths); "
            'run the tests in Debian: docker run --rm -v "$PWD":/src -w /src '
            "python:3.12-bookworm make test"
        ),
    },
    find_missing=_voice_data_missing,
)
PREREQUISITES = {p.key: p for p in (BROWSER, VOICE_DATA)}


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    lock = str(APT_LOCK_TIMEOUT_S)
    return subprocess.run(
        ["apt-get", "-o", f"DPkg::Lock::Timeout={lock}", *args],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
        text=True,
        check=False,
    )


def apt_install(packages: tuple[str, ...]) -> str | None:
    """Install Debian packages with apt-get; None on success, else why not."""
    if shutil.which("apt-get") is None:
        return "this system has no apt-get (not Debian or Ubuntu)"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "apt-get needs root and this is not root"
    install = ("install", "-y", "-qq", "--no-install-recommends", *packages)
    done = _apt_get(*install)
    if done.returncode != 0:  # a fresh system has no package lists yet
        updated = _apt_get("update", "-qq")
        done = _apt_get(*install) if updated.returncode == 0 else updated
    if done.returncode == 0:
        return None
    tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
    return f"`apt-get {done.args[3]}` failed (exit {done.returncode}): {tail}"


def install(prerequisite: Prerequisite, *, out: Callable[[str], None] = print) -> int:
    """Make sure ``prerequisite`` is installed; the exit status ``make`` sees."""
    if prerequisite.missing() is None:
        return 0
    packages = " ".join(prerequisite.debian_packages)
    out(f"== {prerequisite.title} for the tests: missing; apt-get install {packages}")
    failure = apt_install(prerequisite.debian_packages)
    why = prerequisite.missing()
    if why is None:
        return 0
    if failure is not None:
        why = f"{why}; {failure}"
    out(prerequisite.report(why))
    if in_ci():
        out(f"make: CI is set ({os.environ.get('CI')}): a missing prerequisite fails the run.")
        return 1
    out("  (Outside CI the run goes on without those tests.)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.prerequisites", description=__doc__)
    parser.add_argument("action", choices=("install", "show"))
    parser.add_argument("what", choices=sorted(PREREQUISITES))
    args = parser.parse_args(argv)
    prerequisite = PREREQUISITES[args.what]
    if args.action == "install":
        return install(prerequisite)
    why = prerequisite.missing()
    print(prerequisite.report(why) if why else f"{prerequisite.title}: installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
