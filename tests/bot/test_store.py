"""The store: migrations, encryption at rest, forgetting, and keys kept out of files and logs."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import simcord
from alembic.config import Config
from alembic.script import ScriptDirectory
from cryptography.fernet import Fernet
from pydantic import SecretStr

from bot.app import BotServices, open_services
from bot.config import BotConfig, StoreConfig
from bot.crypto import DecryptionError, KeyBox, dev_key_file, keybox_for
from bot.store import LinkedVia, MemberStore, Store, mask_key
from bot.store.db import MIGRATIONS_DIR
from tests.bot.conftest import ENGINE_URL, make_bot_config
from tests.conftest import register

# Each interaction is settled when the bot's work on it is done; under load (a niced pass
# on a busy machine) that took over SimCord's default 5 s, so a ceiling, not a wait.
pytestmark = pytest.mark.simcord(settle_timeout=120)


async def test_migrations_create_the_tables_in_their_own_version_table(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}")
    await store.migrate()
    await store.migrate()  # idempotent
    await store.close()
    db = sqlite3.connect(tmp_path / "bot.sqlite3")
    tables = {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
    assert {"members", "bot_alembic_version"} <= tables
    assert "alembic_version" not in tables  # the engine's version table stays the engine's
    # At the head of the bot's migrations, whichever migration that is now.
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    heads = set(ScriptDirectory.from_config(cfg).get_heads())
    versions = {row[0] for row in db.execute("select version_num from bot_alembic_version")}
    assert versions == heads


async def test_keys_are_encrypted_and_forget_removes_every_member_row(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}")
    await store.migrate()
    box = KeyBox([SecretStr(Fernet.generate_key().decode())])
    members = MemberStore(store, box)
    await members.save(1, SecretStr("tada_one_" + "x" * 30), via=LinkedVia.LINK)
    await members.save(2, SecretStr("tada_two_" + "y" * 30), via=LinkedVia.REGISTER, email="b@x")
    await members.save(1, SecretStr("tada_new_" + "z" * 30), via=LinkedVia.LINK)  # replaced
    one = await members.get(1)
    assert one is not None and one.api_key.get_secret_value() == "tada_new_" + "z" * 30
    assert "tada_new" not in repr(one)
    assert await members.forget(1) == 1
    assert await members.get(1) is None
    assert await members.get(2) is not None
    assert await members.forget(1) == 0
    await store.close()


def test_multifernet_rotation_keeps_old_ciphertexts_readable() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = KeyBox([SecretStr(old)]).encrypt(SecretStr("tada_secret"))
    rotated_box = KeyBox([SecretStr(new), SecretStr(old)])
    assert rotated_box.decrypt(token).get_secret_value() == "tada_secret"
    rotated = rotated_box.rotate(token)
    assert KeyBox([SecretStr(new)]).decrypt(rotated).get_secret_value() == "tada_secret"
    with pytest.raises(DecryptionError):
        KeyBox([SecretStr(new)]).decrypt(token)
    assert old not in repr(rotated_box)


def test_the_development_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    config = make_bot_config(tmp_path / "data")
    first = keybox_for(config)
    mode = stat.S_IMODE(os.stat(config.key_file).st_mode)
    assert mode == 0o600
    token = first.encrypt(SecretStr("tada_k"))
    assert keybox_for(config).decrypt(token).get_secret_value() == "tada_k"
    assert dev_key_file(config.key_file) == dev_key_file(config.key_file)


def test_keys_from_the_environment_are_used_and_no_file_is_written(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    config = make_bot_config(
        tmp_path / "data", store=StoreConfig(encryption_keys=(SecretStr(key),))
    )
    token = keybox_for(config).encrypt(SecretStr("tada_k"))
    assert KeyBox([SecretStr(key)]).decrypt(token).get_secret_value() == "tada_k"
    assert not config.key_file.exists()


def test_masking() -> None:
    assert mask_key(SecretStr("tada_abcdefghijklmnopqrstuvwxyz")) == "tada_…wxyz"
    assert mask_key(SecretStr("short")) == "•••••"


def _files_of(db_path: Path) -> bytes:
    """Every byte SQLite keeps for this database: the file, its WAL and journal."""
    data = b""
    for path in db_path.parent.glob(db_path.name + "*"):
        data += path.read_bytes()
    return data


async def test_the_raw_sqlite_file_never_contains_a_stored_key(
    simcord_env: simcord.Env,
    services: BotServices,
    bot_config: BotConfig,
    api: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    bob = guild.add_member(simcord_env.create_user("bob"))
    caplog.set_level(logging.DEBUG)

    shown = await alice.slash(channel, "tada register")
    await alice.submit_modal(shown, {"email": "alice@example.com"})
    bob_key = await register(api, "bob@example.com")
    await bob.submit_modal(await bob.slash(channel, "tada link"), {"api_key": bob_key})
    await alice.slash(channel, "tada account")

    alice_account = await services.members.get(alice.id)
    assert alice_account is not None
    keys = [alice_account.api_key.get_secret_value(), bob_key]
    db_path = bot_config.data_dir / "bot.sqlite3"
    raw = _files_of(db_path)
    assert raw  # the store really is this file
    dump = "\n".join(sqlite3.connect(db_path).iterdump())
    for key in keys:
        secret = key.removeprefix("tada_")
        assert secret.encode() not in raw
        assert secret not in dump
        # ... nor in any log line, at any level, from any logger.
        assert secret not in caplog.text
    # The ciphertexts are there instead.
    ciphertexts = [
        row[0] for row in sqlite3.connect(db_path).execute("select api_key_encrypted from members")
    ]
    assert len(ciphertexts) == 2


async def test_forgotten_keys_are_overwritten_in_the_file(
    bot_config: BotConfig, engine: tuple[object, httpx.AsyncClient]
) -> None:
    _, api = engine
    async with open_services(bot_config, http=api, base_url=ENGINE_URL) as services:
        key = await register(api, "alice@example.com")
        await services.accounts.link(42, SecretStr(key))
        row = (
            sqlite3.connect(bot_config.data_dir / "bot.sqlite3")
            .execute("select api_key_encrypted from members")
            .fetchone()
        )
        assert row is not None
        await services.accounts.forget(42)
        async with services.store.engine.begin() as conn:
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    assert bytes(row[0]) not in _files_of(bot_config.data_dir / "bot.sqlite3")


async def test_usage_counted_before_migration_0005_still_counts_after_it(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import create_engine

    from bot.gate import Action, Feature
    from bot.policy import PolicyGate, PolicyStore
    from bot.store.db import sync_url

    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = create_engine(sync_url(url))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004_bot_job_token_encrypted")
        conn.exec_driver_sql(
            "insert into bot_usage (guild_id, discord_user_id, feature, action, cost, "
            "shared_key, created_at) values (1, 7, 'lora', 'lora_generate', 1, 0, "
            "'2026-12-01 00:00:00.000000')"
        )
    engine.dispose()

    store = Store(url)
    await store.migrate()
    gate = PolicyGate(PolicyStore(store), KeyBox([SecretStr(Fernet.generate_key().decode())]))
    policy = PolicyStore(store)
    since = datetime(2026, 11, 30, tzinfo=UTC)
    # The old row counts as delivered and is found by the member's id.
    assert await policy.used(1, gate.member(1, 7), Feature.LORA, [Action.LORA_GENERATE], since) == 1
    assert (await policy.usage(1, since))[0].delivered == 1
    await store.close()
