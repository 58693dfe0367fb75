"""scripts/install.py: uv installs from the sources pip is configured with, else pip does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.scripts.loading import load_script

pytestmark = pytest.mark.no_database

install = load_script("install")

# `pip config list` on a machine with local mirrors (this CI's own form).
LISTING = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.default-timeout='180'
:env:.find-links='/opt/wheels'
global.cert='/etc/ssl/certs/other.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/srv/old-wheels'
install.find-links='/srv/install-wheels'
"""


def test_pips_sources_constraints_and_certificates_reach_uv() -> None:
    options = install.pip_options(LISTING)
    # A PIP_* variable overrides the files; the install section overrides global.
    assert options["find-links"] == "/opt/wheels"
    assert options["cert"] == "/etc/ssl/certs/ca-certificates.crt"
    files = "global.find-links='/a'\ninstall.find-links='/b'\n"
    assert install.pip_options(files)["find-links"] == "/b"
    flags, env = install.uv_arguments(options)
    assert flags == [
        "--index", "file:///opt/pypi/simple",
        "--index", "file:///opt/pypi-more/simple",
        "--find-links", "/opt/wheels",
        "--constraint", "/etc/xdg/pip/constraints.txt",
        "--index-strategy", "unsafe-best-match",
    ]  # fmt: skip
    assert env == {"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"}


def test_an_index_url_or_no_index_replaces_the_default_index() -> None:
    flags, _ = install.uv_arguments(
        install.pip_options("global.index-url='https://mirror.example/simple'\n")
    )
    assert flags[:2] == ["--default-index", "https://mirror.example/simple"]
    flags, _ = install.uv_arguments(install.pip_options(":env:.no-index='true'\n"))
    assert flags[0] == "--no-index"


def test_with_no_configuration_uv_uses_its_defaults() -> None:
    assert install.uv_arguments(install.pip_options("")) == (
        ["--index-strategy", "unsafe-best-match"],
        {},
    )


def test_this_machines_pip_configuration_is_read() -> None:
    """The live `pip config list` parses (whatever this machine sets, maybe nothing)."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    options = install.pip_options(listing)
    for line in listing.splitlines():
        name = line.partition("=")[0]
        if name.startswith(":env:."):
            assert name.removeprefix(":env:.") in options
