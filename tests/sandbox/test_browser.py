"""The sandbox as a person meets it: ``python -m bot`` with no token on a fresh data
directory, its page in headless Chromium, every step through the page's own controls.

Screenshots go to ``test-output/sandbox/<test>/`` (numbered in order).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.bot.media_samples import _speech_wav, picture, zip_of
from tests.prerequisites import BROWSER
from tests.sandbox.browser import (
    ACTION_TIMEOUT_MS,
    CHROMIUM,
    CHROMIUM_FLAGS,
    ROOT,
    SandboxPage,
    free_port,
    sandbox_process,
)
from tests.waiting import CEILING_S

# Without Chromium each test skips, saying so and how to install it; under CI=true the
# skip is a failure (tests/conftest.py): CI must never skip the browser test.
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason=BROWSER.skip_reason() or ""),
    pytest.mark.slow(150),
]


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    folder = ROOT / "test-output" / "sandbox" / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Browser, shots: Path) -> Iterator[Callable[[], SandboxPage]]:
    """Open browser pages; each one's last state is captured at the end (pass or fail)."""
    opened: list[SandboxPage] = []

    def make() -> SandboxPage:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
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


def test_a_first_session_voice_clone_speak_and_the_demo_channel(
    tmp_path: Path, new_page: Callable[[], SandboxPage]
) -> None:
    sample = tmp_path / "my-voice.wav"
    sample.write_bytes(_speech_wav())  # real speech (the packaged Piper voice), ~14 s
    with sandbox_process(tmp_path, port=free_port()) as sandbox:
        page = new_page()
        page.open(sandbox.url)
        page.start_command("tada register")
        page.send()
        page.dialog.get_by_label("Email address").fill("voice@example.com")
        page.dialog.get_by_role("button", name="Submit").click()
        page.message_with("is ready and linked to you")

        # /voice clone: the sample goes through the page's file input, then the consent step.
        page.start_command("voice clone")
        page.fill_option("name", "My voice")
        page.attach("sample", sample)
        page.shot("clone-composed")
        page.send()
        consent = page.message_with("Nothing is uploaded until you confirm")
        assert consent.locator(".message-ephemeral-note").count() == 1
        page.shot("consent")
        consent.get_by_role("button", name="It's my voice, or I have permission").click()
        page.message_with("Voice cloned from")
        card = page.message_with("Voice id")
        assert "My voice" in card.inner_text()
        page.shot("voice-card")

        # /voice speak: the voice picked from the autocomplete, the audio posted in the channel.
        page.start_command("voice speak")
        page.autocomplete("voice", "My", pick="My voice")
        page.fill_option("text", "Hello from the sandbox.")
        page.send()
        spoken = page.message_with("Hello from the sandbox.")
        audio = spoken.locator('audio[aria-label="speech.mp3"]')
        audio.wait_for(state="attached")
        duration = audio.evaluate(
            "a => new Promise(r => a.readyState >= 1 ? r(a.duration)"
            " : a.addEventListener('loadedmetadata', () => r(a.duration)))"
        )
        assert duration > 0.5  # a real, decodable MP3 of the sentence
        page.shot("speech-posted")

        # The community demo channel: /sandbox channel switches the page to it.
        page.start_command("sandbox channel")
        page.choose_option("channel", "tadz-demo")
        page.send()
        page.reload_until_channel(sandbox.url, "tadz-demo")
        page.run("demo tadz", prompt="a tadz surfing a wave")
        # This sandbox's config has no demo model: the member gets one short private note
        # that points at the admins, with no Retry; the operator's instructions (config
        # paths) stay in the log.
        answer = page.message_with("The Tadz demo is not set up")
        assert "/tada-admin show" in answer.inner_text()
        assert answer.get_by_role("button", name="Retry").count() == 0
        assert answer.locator(".message-ephemeral-note").count() == 1
        assert "[engine.image.demos.tadz]" not in answer.inner_text()
        assert "lora_path" not in answer.inner_text()
        page.shot("demo-answer")


# The tiny image model, trained long enough to see the page stay usable while the bot works:
# issue 25's freeze only showed in trainings that last, and the issue asks for 30 s or more.
# About 65 ms a step on a quiet 2-core machine (2000 steps took 130 s alone, 281 s beside
# the other passes), so 800 steps last about 50 s quiet; the test checks they lasted 30 s.
# A validation image every 400 steps, shown in the progress message.
TINY_TRAINING = """
[engine.image.training]
steps = 800
checkpoint_every = 400
rank = 4
learning_rate = 1e-2
batch_size = 2

[engine.image.generation]
steps = 2
"""
# Longer than ACTION_TIMEOUT_MS: the whole training. Only a ceiling that ends a hang: 2000
# steps took over 400 s on a 2-core machine at load 13.
TRAINING_TIMEOUT_MS = 900_000
# A command sent while the bot trains is answered while it still trains: that, checked after
# each answer, is the promptness that matters (a frozen page answers only once the training
# ends). The wait itself is the ceiling that only ends a hang, whatever the machine's load.
ANSWER_TIMEOUT_MS = int(CEILING_S * 1000)


def test_lora_upload_train_with_progress_then_generate_an_image(
    tmp_path: Path, new_page: Callable[[], SandboxPage]
) -> None:
    pictures = tmp_path / "my-pictures.zip"
    pictures.write_bytes(zip_of({f"img{i}.jpg": picture(i) for i in range(4)}))
    with sandbox_process(tmp_path, port=free_port(), engine_config=TINY_TRAINING) as sandbox:
        page = new_page()
        page.open(sandbox.url)
        page.start_command("tada register")
        page.send()
        page.dialog.get_by_label("Email address").fill("lora@example.com")
        page.dialog.get_by_role("button", name="Submit").click()
        page.message_with("is ready and linked to you")

        page.start_command("lora upload")
        page.fill_option("name", "Cats")
        page.fill_option("trigger_word", "tadz")
        page.attach("images", pictures)
        page.send()
        sheet = page.message_with("image(s) uploaded")
        contact = sheet.locator("img")
        contact.first.wait_for()  # the contact sheet, shown inline
        page.shot("contact-sheet")

        sheet.get_by_role("button", name="Train").click()
        trained_from = time.monotonic()
        progress = page.message_with("Status:")
        # The page is not held while the bot trains: the Train click is done, the composer
        # is free, and the progress message appears and is edited live.
        page.page.get_by_text("Completing action").wait_for(state="hidden", timeout=10_000)
        progress.filter(has_text="Status: training").wait_for(timeout=ACTION_TIMEOUT_MS)
        first_seen = progress.inner_text()
        page.shot("training")

        # A second tab sends a command meanwhile: answered at once, not "not completed".
        other = new_page()
        other.open(sandbox.url)
        other.start_command("quota")
        other.send()
        other.timeline.locator("article.channel-message").filter(
            has_text="What you can still do on this server"
        ).last.wait_for(timeout=ANSWER_TIMEOUT_MS)
        assert "100%" not in progress.inner_text()  # answered while the training ran
        # And the first tab too: /jobs names the training's LoRA, still running.
        page.start_command("jobs")
        page.send()
        jobs = page.timeline.locator("article.channel-message").filter(has_text="LoRA training")
        jobs.last.wait_for(timeout=ANSWER_TIMEOUT_MS)
        listed = jobs.last.inner_text()
        assert "Running" in listed and "Cats" in listed, listed
        assert "100%" not in progress.inner_text()  # all of it while the training ran
        page.shot("answered-while-training")

        # The progress message is edited in place until the training is done.
        progress.filter(has_text="100%").wait_for(timeout=TRAINING_TIMEOUT_MS)
        assert progress.inner_text() != first_seen
        assert "Elapsed" in progress.inner_text()
        result = page.message_with("is trained")
        trained_in = time.monotonic() - trained_from
        print(f"training: {trained_in:.0f} s")
        # What this test is for: a training that lasts (raise the steps if this fails).
        assert trained_in >= 30, trained_in
        assert "`tadz`" in result.inner_text() or "tadz" in result.inner_text()
        page.shot("trained")

        # A click at the moment the page republishes the message can be refused as stale
        # (docs/sandbox.md), and a loaded machine answers late: click again until the form
        # opens, under the ceiling that only ends a hang.
        deadline = time.monotonic() + CEILING_S
        while True:
            page.message_with("is trained").get_by_role("button", name="Generate").click()
            try:
                page.dialog.get_by_role("textbox").first.wait_for(timeout=30_000)
                break
            except PlaywrightTimeout:
                if time.monotonic() > deadline:
                    raise
        page.dialog.get_by_role("textbox").first.fill("a cat on a sofa")
        page.dialog.get_by_role("button", name="Submit").click()
        posted = page.message_with("Enhanced prompt")
        assert "a cat on a sofa" in posted.inner_text()
        image = posted.locator(".message-attachments img")
        image.first.wait_for()
        # The page republishes messages as it polls, so an <img> can be replaced (or be
        # complete but not yet decoded) at any instant: re-query until one is drawn.
        width = 0
        deadline = time.monotonic() + CEILING_S
        while width == 0 and time.monotonic() < deadline:
            widths = image.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            width = max(widths, default=0)
            if width == 0:
                time.sleep(0.25)
        assert width > 0  # a decodable image, drawn in the page
        page.shot("image-posted")
