"""Secrets stay secret: no API key or Discord token in any log line, file or error message.

One session of activity with the bot (SimCord) over the real engine (worker and tiny image
model running): register through the modal, link a wrong key then a right one, look at
the account, upload and train a LoRA, draw with it, a demo that fails, direct API calls
with a wrong key. Every log record of every logger, at DEBUG (discord's own loggers at
INFO, as ``tada-bot`` configures them, since its gateway DEBUG dump carries modal input),
is captured unredacted and scanned, with its arguments, exception and stack text. Then
the engine's and the bot's database files are scanned for the keys in clear, and every
message the bot posted (public or ephemeral, the one-time key display aside) too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import simcord
from fastapi import FastAPI
from pydantic import SecretStr

from bot.app import BotServices
from bot.config import BotConfig
from bot.jobs import JobState
from engine.settings import EngineSettings, JobSettings
from tests.bot.conftest import make_bot_config
from tests.bot.media_samples import picture, zip_of
from tests.conftest import database_dump, make_settings, register
from tests.waiting import CEILING_S

pytestmark = pytest.mark.simcord(settle_timeout=120)

DISCORD_TOKEN = "MTE5ODc2NTQzMjEwOTg3NjU0Mw.GxYzAb.Qw3rTy8uIoPaSdFgHjKlZxCvBnM1234567890ab"
WRONG_KEY = "tada_ThisKeyIsWrongButShapedLikeARealOne_0123456"
KEY_SHAPE = re.compile(r"tada_[A-Za-z0-9_-]{40,}")


class Everything(logging.Handler):
    """Keeps the full text of every record: message, arguments, exception, stack."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a broken format string still has its parts scanned
            text = f"{record.msg!r} {record.args!r}"
        parts = [record.name, text, repr(record.args)]
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(logging.Formatter().formatException(record.exc_info))
        if record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info)
        self.lines.append(" | ".join(parts))


@pytest.fixture
def captured() -> Iterator[Everything]:
    handler = Everything()
    root = logging.getLogger()
    discord_logger = logging.getLogger("discord")
    saved = (root.level, discord_logger.level)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    discord_logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        discord_logger.setLevel(saved[1])


@pytest.fixture
def engine_settings(tmp_path: Path) -> EngineSettings:
    return make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image={
            "training": {"steps": 4, "rank": 4, "learning_rate": 1e-2, "batch_size": 2},
            "zip": {"min_side": 32},
            "generation": {"steps": 1},
        },
    )


@pytest.fixture
def bot_config(tmp_path: Path) -> BotConfig:
    config = make_bot_config(
        tmp_path / "bot", jobs={"poll_seconds": 0.05, "post_backoff_seconds": 0.01}
    )
    discord = config.discord.model_copy(update={"token": SecretStr(DISCORD_TOKEN)})
    return config.model_copy(update={"discord": discord})


def files_bytes(directory: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


async def test_no_secret_in_logs_files_or_messages_during_a_session(
    captured: Everything,
    simcord_env: simcord.Env,
    services: BotServices,
    engine: tuple[FastAPI, httpx.AsyncClient],
    bot_config: BotConfig,
    engine_settings: EngineSettings,
) -> None:
    app, api = engine
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    bob = guild.add_member(simcord_env.create_user("bob"))
    seen: list[str] = []

    def keep(result: simcord.InteractionResult) -> None:
        for message in [result.response, *result.followups]:
            if message is not None:
                seen.append(message.content or "")
                seen.extend(str(e.to_dict()) for e in message.embeds)

    # Alice registers through the modal: her key is shown to her once, ephemerally.
    shown = await alice.slash(channel, "tada register")
    registered = await alice.submit_modal(shown, {"email": "alice@example.com"})
    account = await services.members.get(alice.id)
    assert account is not None
    alice_key = account.api_key.get_secret_value()
    assert registered.ephemeral and registered.response is not None
    assert f"||{alice_key}||" in registered.response.content  # the one display, by design

    # Bob pastes a wrong key, then his real one.
    bob_key = await register(api, "bob@example.com")
    keep(await bob.submit_modal(await bob.slash(channel, "tada link"), {"api_key": WRONG_KEY}))
    keep(await bob.submit_modal(await bob.slash(channel, "tada link"), {"api_key": bob_key}))
    keep(await bob.slash(channel, "tada account"))
    keep(await alice.slash(channel, "tada account"))

    # Alice uploads and trains a LoRA, then draws with it.
    up = await alice.slash(
        channel,
        "lora upload",
        name="Cats",
        trigger_word="tadz",
        images=("set.zip", zip_of({f"img{i}.jpg": picture(i) for i in range(4)})),
    )
    keep(up)
    trained = await alice.click(up.followups[-1], label="Train")
    keep(trained)
    [job] = await simcord_env.bot.jobs.store.for_member(alice.id)  # type: ignore[attr-defined]
    assert job.state is JobState.FINISHED, job
    drawn = await alice.submit_modal(
        await alice.click(trained.followups[-1], label="Generate"), {"prompt": "a cat"}
    )
    keep(drawn)
    # A demo that fails (no demo model configured here): a failure path, logged.
    keep(await bob.slash(channel, "demo tadz", prompt="a penguin"))

    # Direct calls with a wrong key and a key-shaped id: refusals, logged or not.
    for key in (WRONG_KEY, alice_key[:-1] + "x"):
        refused = await api.get("/api/voices", headers={"X-API-Key": key})
        assert refused.status_code == 401
        seen.append(refused.text)
    seen.extend(m.content for m in channel.history())
    _ = simcord_env.errors

    secrets = {
        "alice's key": alice_key,
        "bob's key": bob_key,
        "the wrong key": WRONG_KEY,
        "the Discord token": DISCORD_TOKEN,
        "SimCord's login token": "simcord.fake.token",
    }
    assert len(captured.lines) > 100, len(captured.lines)  # the capture really captured
    leaks = [
        f"{what} in log line: {line[:300]}"
        for line in captured.lines
        for what, secret in secrets.items()
        if secret in line
    ]
    shaped = [line[:300] for line in captured.lines if KEY_SHAPE.search(line)]
    assert not leaks, "\n".join(leaks)
    assert not shaped, "\n".join(shaped)

    # Files: the engine keeps only hashes, the bot only ciphertext. The engine database's
    # rows are read through SQL too: on PostgreSQL they are not in the data directory.
    on_disk = files_bytes(engine_settings.data_dir) | files_bytes(bot_config.data_dir)
    assert any(p.name.endswith(".sqlite3") for p in on_disk)
    rows = database_dump(app)
    assert "alice" in rows  # the dump really holds the engine's users
    on_disk[Path("engine database rows")] = rows.encode()
    for path, data in on_disk.items():
        for what, secret in secrets.items():
            assert secret.encode() not in data, f"{what} in clear in {path}"

    # Messages and error answers never repeat a key (the one-time display aside).
    for text in seen:
        for what, secret in secrets.items():
            assert secret not in text, f"{what} in a message: {text[:300]}"
