#!/usr/bin/env python3
"""``pip install ARGS`` into this Python's environment, done by uv, from pip's own sources.

``make setup``'s project step (about 190 pinned packages) took 90 s with pip on a quiet
2-core machine: 35 s looking the packages up one index page at a time, 55 s unpacking and
compiling them one after the other. uv (https://github.com/astral-sh/uv) resolves and
unpacks in parallel: about 45 s, bytecode compiled as pip does. Same lock, same packages:
``-c constraints.txt`` pins every one.

uv does not read pip's configuration (``pip.conf``, ``PIP_*`` variables), where a machine
names its mirrors, local wheel folders, extra constraints and certificates. This script
passes pip's own view of them (``pip config list``) to uv. Should uv not install, or fail
for any reason, pip installs the same arguments as before, after one line saying why.

    python scripts/install.py -c constraints.txt -e '.[engine,ml,dev,sandbox]'

Only the arguments used by the Makefile are understood by both: ``-c FILE``, ``-e SPEC``,
``--no-deps`` and requirement specifiers.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# ``pip config list`` prints each option as SECTION.KEY='VALUE' (the configuration files
# folded together, e.g. ``global.find-links='/opt/wheels'``), and ``:env:.KEY`` for a
# PIP_* variable. For ``pip install``, the install section overrides global, and a
# variable overrides both.
SECTIONS = ("global", "install", ":env:")


def pip_options(listing: str) -> dict[str, str]:
    """The options ``pip install`` would use, from ``pip config list``'s lines."""
    ranked: dict[str, tuple[int, str]] = {}
    for line in listing.splitlines():
        name, sep, raw = line.partition("=")
        if not sep or "." not in name:
            continue
        section, _, key = name.rpartition(".")
        if section not in SECTIONS:
            continue
        rank = SECTIONS.index(section)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if key not in ranked or rank >= ranked[key][0]:
            ranked[key] = (rank, str(value))
    return {key: value for key, (_, value) in ranked.items()}


def uv_arguments(options: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """uv's flags and environment for pip's sources, constraints and certificates."""
    flags: list[str] = []
    env: dict[str, str] = {}
    if options.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        flags.append("--no-index")
    if "index-url" in options:
        flags += ["--default-index", options["index-url"]]
    for url in options.get("extra-index-url", "").split():
        flags += ["--index", url]
    for place in options.get("find-links", "").split():
        flags += ["--find-links", place]
    for path in options.get("constraint", "").split():
        flags += ["--constraint", path]
    for host in options.get("trusted-host", "").split():
        flags += ["--allow-insecure-host", host]
    if "cert" in options:
        env["SSL_CERT_FILE"] = options["cert"]
    # pip takes the best version from all its indexes together, not the first index's.
    flags += ["--index-strategy", "unsafe-best-match"]
    return flags, env


def pip_install(args: Sequence[str]) -> int:
    return subprocess.call([sys.executable, "-m", "pip", "install", *args])


def main(args: Sequence[str]) -> int:
    uv = Path(sys.executable).with_name("uv")
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    flags, env = uv_arguments(pip_options(listing))
    # uv itself, pinned in the lock, from pip's sources.
    constraints = [a for i, a in enumerate(args) if i and args[i - 1] in ("-c", "--constraint")]
    got_uv = subprocess.call(
        [sys.executable, "-m", "pip", "install", "-q", *(f"-c{c}" for c in constraints), "uv"]
    )
    if got_uv == 0 and uv.exists():
        command = [
            str(uv),
            "pip",
            "install",
            "--python",
            sys.executable,
            "--compile-bytecode",
            *flags,
            *args,
        ]
        if subprocess.call(command, env={**os.environ, **env}) == 0:
            return 0
        print("install: uv did not install them; pip installs the same", flush=True)
    else:
        print("install: uv is not available here; pip installs instead", flush=True)
    return pip_install(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
