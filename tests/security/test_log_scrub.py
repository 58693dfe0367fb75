"""The bot's logs hold no signed URL, key or email (issue 24, item 8).

``make run`` logged every bot-to-engine request at INFO through httpx's logger ("HTTP
Request: GET ..."), with full signed artifact URLs (valid for hours) and members' emails in
the query string. Here the bot's own logging set-up (:func:`bot.logs.configure_logging`,
as ``tada-bot`` calls it) writes to a buffer while a member registers through the modal,
looks at the account, uploads a LoRA set (a signed PUT) and the bot's client downloads a
signed artifact; then a URL-printing library warns with a signed URL and an exception
carries one. What was written must hold paths, never a signature, a key or an email.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import simcord
from fastapi import FastAPI

from bot.app import BotServices
from bot.logs import configure_logging
from tests.bot.conftest import ENGINE_URL
from tests.bot.media_samples import picture, zip_of
from tests.conftest import register, services_of

pytestmark = pytest.mark.simcord(settle_timeout=60)

# Loggers whose levels the set-up changes (restored after the test).
TOUCHED = ("discord", "httpx", "httpcore", "urllib3", "botocore", "boto3", "s3transfer")
KEY_SHAPE = re.compile(r"tada_[A-Za-z0-9_-]{20,}")
EMAIL_SHAPE = re.compile(r"[\w.+-]+(?:@|%40)[\w-]+\.[\w.]+")
SIGNED_QUERY = re.compile(r"(?i)(signature|x-amz-signature|x-amz-credential|expires)=[^*&\s]")


@pytest.fixture
def bot_log() -> Iterator[io.StringIO]:
    """The root logger as ``tada-bot`` sets it up (INFO, as ``make run``), into a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in TOUCHED})
    for handler in saved[0]:
        root.removeHandler(handler)
    buffer = io.StringIO()
    configure_logging("INFO")
    ours = root.handlers[:]
    assert ours, "configure_logging installed no handler"
    for handler in ours:
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)
    try:
        yield buffer
    finally:
        for handler in ours:
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


async def test_bot_logs_hold_paths_but_no_signature_key_or_email(
    bot_log: io.StringIO,
    simcord_env: simcord.Env,
    services: BotServices,
    engine: tuple[FastAPI, httpx.AsyncClient],
    tmp_path: Path,
) -> None:
    app, api = engine
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))

    # The member registers through the modal: her email travels in the query string.
    shown = await alice.slash(channel, "tada register")
    await alice.submit_modal(shown, {"email": "alice.secret@example.com"})
    account = await services.members.get(alice.id)
    assert account is not None
    key = account.api_key.get_secret_value()
    await alice.slash(channel, "tada account")
    # A LoRA set: an upload URL, then a signed PUT.
    up = await alice.slash(
        channel,
        "lora upload",
        name="Cats",
        trigger_word="tadz",
        images=("set.zip", zip_of({f"img{i}.jpg": picture(i) for i in range(4)})),
    )
    assert up.followups, up

    # The bot's client downloads a signed artifact, as it does every finished job's.
    engine_services = services_of(app)
    engine_services.storage.write_artifact("generations/log-test.png", b"\x89PNG fake")
    signed = engine_services.artifact_url(ENGINE_URL + "/", "generations/log-test.png")
    assert "signature=" in signed
    size = await services.tada.download_to(signed, tmp_path / "a.png")
    assert size == len(b"\x89PNG fake")
    await register(api, "bob.secret@example.com")

    # A URL-printing library that warns, and an exception that carries a URL: scrubbed.
    logging.getLogger("httpx").warning("retrying %s for %s", signed, "bob.secret@example.com")
    try:
        raise httpx.HTTPStatusError(
            f"Client error '404 Not Found' for url '{signed}'",
            request=httpx.Request("GET", signed),
            response=httpx.Response(404),
        )
    except httpx.HTTPStatusError:
        logging.getLogger("bot.jobs").exception("download of %s failed (key %s)", signed, key)

    text = bot_log.getvalue()
    lines = text.splitlines()
    signature = signed.split("signature=", 1)[1].split("&", 1)[0]
    problems = [
        f"{what}: {line[:200]}"
        for line in lines
        for what, bad in (
            ("httpx request line", "HTTP Request:" in line),
            ("signature", signature in line or bool(SIGNED_QUERY.search(line))),
            ("key", key in line or bool(KEY_SHAPE.search(line))),
            ("email", "secret@" in line or bool(EMAIL_SHAPE.search(line))),
        )
        if bad
    ]
    print(f"bot log: {len(lines)} lines written, {len(problems)} with a secret")
    assert not problems, "\n".join(problems)
    assert "/storage/artifacts/generations/log-test.png" in text  # the path stays useful
    assert "retrying" in text and "failed" in text  # the records themselves were kept


@pytest.mark.parametrize(
    ("line", "kept", "gone"),
    [
        (
            'HTTP Request: GET http://e/storage/artifacts/g/a.png?expires=9&signature=ab12 "200"',
            "http://e/storage/artifacts/g/a.png",
            "ab12",
        ),
        ("POST /api/users/register?email=a%40b.example 200", "/api/users/register", "a%40b"),
        (
            "https://s3.example/b/k.wav?X-Amz-Credential=AKIA1234%2F2026&X-Amz-Signature=f00d",
            "https://s3.example/b/k.wav",
            "AKIA1234",
        ),
        ("member bob@example.org linked", "member", "bob@example.org"),
        ("key tada_abcdefghijklmnopqrstuvwxyz012345 refused", "refused", "abcdefghijklmnop"),
        ("{'X-API-Key': 'tada_short', 'Authorization': 'Bearer s3cr3t'}", "X-API-Key", "s3cr3t"),
        ("signature=deadbeef&expires=1", "signature=", "deadbeef"),
    ],
)
def test_scrub_keeps_paths_and_masks_secrets(line: str, kept: str, gone: str) -> None:
    from engine.logs import scrub

    cleaned = scrub(line)
    assert kept in cleaned and gone not in cleaned, cleaned


def test_uvicorn_access_records_keep_their_arguments() -> None:
    """uvicorn's access formatter unpacks ``record.args``: scrubbing keeps them a tuple."""
    from uvicorn.logging import AccessFormatter

    from engine.logs import ScrubSecrets

    path = "/storage/artifacts/g/a.png?expires=9&signature=feedface"
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", path, "1.1", 200),
        None,
    )
    assert ScrubSecrets().filter(record)
    line = AccessFormatter("%(message)s", use_colors=False).format(record)
    assert "/storage/artifacts/g/a.png" in line and "feedface" not in line, line
