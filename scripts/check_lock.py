#!/usr/bin/env python3
"""Check the lock (``constraints.txt``) against the public package index's metadata only.

``make run`` and ``make test`` install exactly the pinned versions, so on a fresh machine
every pin must exist on the public index (https://pypi.org/simple) and have a file that
installs there: a wheel for the platform and Python, or a source archive. This machine's
own pip configuration (local wheels, mirrors, extra constraints) is ignored on purpose: a
pin that only exists here (``torch==2.13.0+cpu``, a local build label) passed every
local install and failed everywhere else.

It reads the index's JSON pages (PEP 691), one per pinned package, in parallel, within a
deadline; nothing is downloaded or installed. Exit status: 0 when every pin resolves, 1
when some do not (each is listed), 2 when the index cannot be read.

    python scripts/check_lock.py [constraints.txt] [--index-url URL] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

PUBLIC_INDEX = "https://pypi.org/simple"
JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"
ROOT = Path(__file__).resolve().parents[1]

# Fetches an index page as parsed JSON (tests pass a fake index).
Fetch = Callable[[str], dict[str, Any]]


class IndexUnreachable(RuntimeError):
    """The index could not be read at all (offline, DNS, deadline); not a lock problem."""


@dataclass(frozen=True)
class Target:
    """A machine the README's commands must work on: a Python version and its wheel tags."""

    name: str
    python: tuple[int, int]
    tags: frozenset[Tag]


def _linux(arch: str) -> list[str]:
    return [f"manylinux_2_{minor}_{arch}" for minor in range(39, 16, -1)] + [
        f"manylinux2014_{arch}",
        f"linux_{arch}",
    ]


def _target(name: str, python: tuple[int, int], platforms: list[str]) -> Target:
    abi = f"cp{python[0]}{python[1]}"
    tags = [
        *cpython_tags(python, abis=[abi, "abi3", "none"], platforms=platforms),
        *compatible_tags(python, interpreter=abi, platforms=platforms),
    ]
    return Target(
        name=f"{name}, Python {python[0]}.{python[1]}", python=python, tags=frozenset(tags)
    )


def default_targets() -> list[Target]:
    """Fresh Linux (x86_64, arm64) and macOS (Apple silicon) machines, Python 3.11 to 3.13."""
    platforms = {
        "Linux x86_64": _linux("x86_64"),
        "Linux aarch64": _linux("aarch64"),
        "macOS arm64": list(mac_platforms((14, 0), "arm64")),
    }
    return [
        _target(name, (3, minor), tags)
        for name, tags in platforms.items()
        for minor in (11, 12, 13)
    ]


@dataclass(frozen=True)
class Pin:
    """One ``name==version`` line of the lock."""

    line: int
    name: str
    version: str


def read_pins(lines: Iterable[str]) -> tuple[list[Pin], list[str]]:
    """The exact pins of a constraints file, and the lines that are not exact pins."""
    pins: list[Pin] = []
    problems: list[str] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            problems.append(f"line {number}: {text!r} is not a requirement ({exc})")
            continue
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator not in ("==", "==="):
            problems.append(f"line {number}: {text!r} is not an exact pin (name==version)")
            continue
        pins.append(Pin(line=number, name=req.name, version=specs[0].version))
    return pins, problems


def _file_version(filename: str, name: str) -> tuple[Version, frozenset[Tag] | None] | None:
    """A file's version and, for a wheel, its tags (``None``: a source archive)."""
    try:
        if filename.endswith(".whl"):
            wheel_name, version, _, tags = parse_wheel_filename(filename)
            if canonicalize_name(wheel_name) != canonicalize_name(name):
                return None
            return version, tags
        sdist_name, version = parse_sdist_filename(filename)
        if canonicalize_name(sdist_name) != canonicalize_name(name):
            return None
        return version, None
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None


def _python_ok(requires: str | None, python: tuple[int, int]) -> bool:
    if not requires:
        return True
    try:
        return SpecifierSet(requires).contains(f"{python[0]}.{python[1]}.0", prereleases=True)
    except ValueError:  # an unparsable Requires-Python: pip ignores it too
        return True


def check_pin(pin: Pin, page: dict[str, Any], targets: Sequence[Target]) -> list[str]:
    """What is wrong with one pin on the index page of its package ([] when nothing)."""
    wanted = Version(pin.version)
    files = []
    for entry in page.get("files", []):
        if entry.get("yanked"):
            continue
        parsed = _file_version(str(entry.get("filename", "")), pin.name)
        # Exact: 2.13.0+cpu is not 2.13.0 (a local label lives only where it was built).
        if parsed is not None and parsed[0] == wanted:
            files.append((parsed[1], entry.get("requires-python")))
    where = f"line {pin.line}: {pin.name}=={pin.version}"
    if not files:
        versions = sorted(
            {
                str(parsed[0])
                for entry in page.get("files", [])
                if not entry.get("yanked")
                and (parsed := _file_version(str(entry.get("filename", "")), pin.name))
            },
            key=Version,
        )
        hint = f" (latest there: {versions[-1]})" if versions else ""
        if wanted.local:
            hint += f"; {wanted.local!r} is a local build label: pin {wanted.public} instead"
        return [f"{where}: not on the public index{hint}"]
    problems = []
    for target in targets:
        if not any(
            _python_ok(requires, target.python) and (tags is None or tags & target.tags)
            for tags, requires in files
        ):
            problems.append(f"{where}: no wheel or source archive installs on {target.name}")
    return problems


def fetch_json(index_url: str, timeout: float) -> Fetch:
    """A fetcher of ``<index>/<name>/`` as PEP 691 JSON."""

    def fetch(name: str) -> dict[str, Any]:
        url = f"{index_url.rstrip('/')}/{canonicalize_name(name)}/"
        request = urllib.request.Request(url, headers={"Accept": JSON_ACCEPT})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                page: dict[str, Any] = json.load(response)
                return page
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return {"files": []}
            raise IndexUnreachable(f"{url}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise IndexUnreachable(f"{url}: {exc}") from exc

    return fetch


def check_lock(
    lines: Iterable[str], fetch: Fetch, targets: Sequence[Target] | None = None
) -> list[str]:
    """Every problem of the lock on the index behind ``fetch`` ([] when it resolves)."""
    targets = default_targets() if targets is None else targets
    pins, problems = read_pins(lines)
    with ThreadPoolExecutor(max_workers=16) as pool:
        pages = list(pool.map(lambda pin: fetch(pin.name), pins))
    for pin, page in zip(pins, pages, strict=True):
        problems.extend(check_pin(pin, page, targets))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", nargs="?", type=Path, default=ROOT / "constraints.txt")
    parser.add_argument("--index-url", default=PUBLIC_INDEX)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per index page")
    args = parser.parse_args(argv)
    lines = args.lock.read_text().splitlines()
    try:
        problems = check_lock(lines, fetch_json(args.index_url, args.timeout))
    except IndexUnreachable as exc:
        print(f"check_lock: cannot read the index ({exc})", file=sys.stderr)
        return 2
    count = len(read_pins(lines)[0])
    if problems:
        print(f"{args.lock.name}: {len(problems)} problem(s) on {args.index_url}:")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print(
        f"{args.lock.name}: all {count} pins resolve on {args.index_url} for Linux "
        "(x86_64, aarch64) and macOS (arm64), Python 3.11 to 3.13"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
