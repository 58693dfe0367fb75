"""The sandbox as a person meets it: ``python -m bot`` with no token on a fresh data
directory, its page in headless Chromium, every step through the page's own controls.

Screenshots go to ``test-output/sandbox/<test>/`` (numbered in order).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.sandbox.browser import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    ROOT,
    SandboxPage,
    free_port,
    sandbox_process,
)

playwright_api = pytest.importorskip("playwright.sync_api")

if not CHROMIUM.exists():
    # `make test` installs Debian's chromium; CI must never skip the browser test.
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: `make test` installs it (apt-get)")
    pytest.skip(f"{CHROMIUM} not installed (make test installs it)", allow_module_level=True)


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    folder = ROOT / "test-output" / "sandbox" / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


@pytest.fixture
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: object, shots: Path) -> Iterator[Callable[[], SandboxPage]]:
    """Open browser pages; each one's last state is captured at the end (pass or fail)."""
    opened: list[SandboxPage] = []

    def make() -> SandboxPage:
        page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
        opened.append(SandboxPage(page, shots))
        return opened[-1]

    yield make
    for page in opened:
        with contextlib.suppress(Exception):
            page.shot("final")


def test_register_in_the_browser_then_the_account_outlives_a_restart(
    tmp_path: Path, new_page: Callable[[], SandboxPage]
) -> None:
    port = free_port()
    with sandbox_process(tmp_path, port=port) as sandbox:
        assert sandbox.url.startswith(f"http://127.0.0.1:{port}/#")
        page = new_page()
        page.open(sandbox.url)
        page.shot("empty-channel")

        page.start_command("tada register")
        page.send()
        page.dialog.get_by_label("Email address").fill("keyboard@example.com")
        page.shot("register-modal")
        page.dialog.get_by_role("button", name="Submit").click()

        message = page.message_with("is ready and linked to you")
        assert "keyboard@example.com" in message.inner_text()
        assert message.locator(".message-ephemeral-note").inner_text() == "Only you can see this"
        page.shot("registered")
        first_token = sandbox.access_token

    state = json.loads((tmp_path / "data" / "sandbox.json").read_text())
    # The store and engine are files in the data directory; the simulated Discord is not.
    assert (tmp_path / "data" / "bot.sqlite3").exists()

    # Second run, same data directory: the same member, known to the bot's store.
    with sandbox_process(tmp_path, port=port) as again:
        assert again.access_token == first_token  # a bookmarked page keeps working
        assert json.loads((tmp_path / "data" / "sandbox.json").read_text()) == state
        page = new_page()
        page.open(again.url)
        page.start_command("tada account")
        page.send()
        page.message_with("keyboard@example.com")
        page.shot("account-after-restart")


def test_switching_to_the_demo_channel(tmp_path: Path, new_page: Callable[[], SandboxPage]) -> None:
    with sandbox_process(tmp_path, port=free_port()) as sandbox:
        page = new_page()
        page.open(sandbox.url)
        page.start_command("sandbox channel")
        page.choose_option("channel", "tadz-demo")
        page.send()
        page.reload_until_channel(sandbox.url, "tadz-demo")
        page.shot("demo-channel")
