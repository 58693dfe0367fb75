"""Drive the sandbox like a person: start ``python -m bot`` without a token (as ``make run``
does) and work its page in headless Chromium through Playwright.

Chromium is the system's (``make browser`` installs Debian's; ``tests/prerequisites.py``
says where it is looked for and how to install it elsewhere); Playwright's own browser
downloads are never used.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.prerequisites import chromium
from tests.waiting import CEILING_S, polls

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

ROOT = Path(__file__).parents[2]
# None: not installed (the browser test skips, or fails under CI=true).
CHROMIUM = chromium()
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Waits for work the bot does for real (engine calls, audio on a CPU) end only a hang
# (tests/waiting.py): a fixed 120 s failed a voice clone at load 19 on two cores.
START_TIMEOUT_S = CEILING_S
ACTION_TIMEOUT_MS = int(CEILING_S * 1000)
URL_LINE = re.compile(r"Open:\s+(http://127\.0\.0\.1:\d+/#\S+)")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class SandboxProcess:
    """A running ``python -m bot`` in sandbox mode; ``url`` is what it printed."""

    process: subprocess.Popen[str]
    url: str
    output: list[str]

    @property
    def access_token(self) -> str:
        """The token in the URL's fragment."""
        return self.url.split("#", 1)[1]


@contextmanager
def sandbox_process(
    workdir: Path, *, port: int, channel: str = "general", engine_config: str = ""
) -> Iterator[SandboxProcess]:
    """Start the sandbox the way the run command does, in ``workdir`` (its config and data
    live there); stop it with Ctrl+C (SIGINT) like a person would. ``engine_config`` is
    TOML added to the config file (e.g. ``[engine.image.training]`` tables)."""
    config = workdir / "config.toml"
    if not config.exists():
        # The engine on any free port: several test runs may share the machine.
        config.write_text('[general]\ndata_dir = "data"\n\n[engine]\nport = 0\n\n' + engine_config)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DISCORD_TOKEN", "TADA_SANDBOX", "TADA_DATA_DIR", "TADA_MODE")
    }
    env["TADA_CONFIG"] = str(config)
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bot",
            "--sandbox-port",
            str(port),
            "--sandbox-channel",
            channel,
        ],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = URL_LINE.search(line)
            if match and not url:
                url.append(match.group(1))
                found.set()
        found.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        found.wait(START_TIMEOUT_S)
        if not url:
            raise AssertionError("the sandbox printed no URL:\n" + "".join(output))
        yield SandboxProcess(process=process, url=url[0], output=output)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        reader.join(10)
        (workdir / f"sandbox-{port}.log").write_text("".join(output))


class SandboxPage:
    """The sandbox page, driven through its own controls: the composer, slash command
    options, modals and message buttons."""

    def __init__(self, page: Page, shots: Path) -> None:
        self.page = page
        self.shots = shots

    def open(self, url: str) -> None:
        """Load the page and wait for the composer."""
        self.page.goto(url)
        self.page.locator("#channel-composer-input").wait_for(timeout=ACTION_TIMEOUT_MS)

    def shot(self, name: str) -> Path:
        """A screenshot into the test's output folder, numbered in order."""
        # Numbered across every page of the test, in the order they were taken.
        count = len(list(self.shots.glob("*.png"))) + 1
        path = self.shots / f"{count:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    @property
    def timeline(self) -> Locator:
        """The channel's messages."""
        return self.page.locator("#channel-timeline")

    @property
    def dialog(self) -> Locator:
        """The open modal."""
        return self.page.locator("#modal-root").get_by_role("dialog")

    def start_command(self, invocation: str) -> None:
        """Type ``/invocation`` and pick it from the command list."""
        box = self.page.locator("#channel-composer-input")
        box.click()
        box.fill("")
        box.type(f"/{invocation}")
        title = re.compile(f"^/{re.escape(invocation)}$")
        entry = self.page.locator(".command-entry").filter(
            has=self.page.locator("strong", has_text=title)
        )
        entry.first.click(timeout=ACTION_TIMEOUT_MS)
        self.page.locator(f'.command-chip[aria-label="Command /{invocation}"]').wait_for(
            timeout=ACTION_TIMEOUT_MS
        )

    def option(self, name: str) -> Locator:
        """The input of option ``name`` of the command being composed."""
        return self.page.locator(f'.command-pill[data-option="{name}"] input').first

    def fill_option(self, name: str, value: str) -> None:
        """Type a text option's value."""
        field = self.option(name)
        field.click()
        field.fill(value)

    def choose_option(self, name: str, value: str) -> None:
        """Pick a choice (or an autocomplete suggestion) by its value."""
        field = self.option(name)
        field.click()
        suggestion = self.page.locator(f'.command-suggestion[data-value="{value}"]')
        suggestion.wait_for(timeout=ACTION_TIMEOUT_MS)
        suggestion.click()

    def autocomplete(self, name: str, typed: str, *, pick: str) -> None:
        """Type into an autocompleted option and pick the suggestion labelled ``pick``."""
        field = self.option(name)
        field.click()
        field.fill(typed)
        suggestion = self.page.locator(".command-suggestion").filter(has_text=pick).first
        suggestion.click(timeout=ACTION_TIMEOUT_MS)

    def attach(self, name: str, path: Path) -> None:
        """Upload a file into attachment option ``name`` through the page's file input."""
        self.page.locator(f'input[type="file"][data-option="{name}"]').set_input_files(str(path))

    def send(self) -> None:
        """Run the composed command."""
        self.page.locator("#send-message").click()

    def run(self, invocation: str, **options: str) -> None:
        """Compose and run a command whose options are all text."""
        self.start_command(invocation)
        for name, value in options.items():
            self.fill_option(name, value)
        self.send()

    def message_with(self, text: str) -> Locator:
        """Wait for the (last) message in the channel that contains ``text``."""
        message = self.timeline.locator("article.channel-message").filter(has_text=text).last
        message.wait_for(timeout=ACTION_TIMEOUT_MS)
        return message

    def reload_until_channel(self, url: str, channel: str) -> None:
        """Reload the page until it shows ``#channel`` (the sandbox switches asynchronously)."""
        for _ in polls():
            self.page.goto("about:blank")
            try:
                self.open(url)
            except PlaywrightError:
                # The switch closes the page's server and opens it again: between the two,
                # a reload is refused.
                time.sleep(0.5)
                continue
            name = self.page.locator("#channel-name")
            with contextlib.suppress(PlaywrightTimeout):
                name.filter(has_text=re.compile(f"^{re.escape(channel)}$")).wait_for(timeout=1000)
                return
        raise AssertionError(f"the page never showed #{channel}")
