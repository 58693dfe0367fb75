"""Sharding: the bot is an AutoShardedBot whose shards come from config or flags, and a
member's request on a guild of any shard runs and is posted once."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.__main__ import _shard_ids, _with_shards
from bot.app import BotServices
from bot.config import BotConfig, ConfigError, load_bot_config
from bot.jobs import Destination, ShardScope
from bot.jobs.runner import shard_scope
from bot.store import LinkedVia
from tests.bot.conftest import make_bot_config
from tests.conftest import database_backend, register

# Each interaction is settled when the bot's work on it is done; under load (a niced pass
# on a busy machine) that took over SimCord's default 5 s, so a ceiling, not a wait.
pytestmark = pytest.mark.simcord(settle_timeout=120)


@pytest.fixture
def bot_config(tmp_path: Path) -> BotConfig:
    return make_bot_config(tmp_path / "bot", discord={"shard_count": 2})


def test_shards_come_from_the_config_file_and_the_flags() -> None:
    config = load_bot_config({"discord": {"shard_count": 4, "shard_ids": [0, 1]}}, {})
    assert (config.discord.shard_count, config.discord.shard_ids) == (4, (0, 1))
    with pytest.raises(ConfigError, match="shard_ids"):
        load_bot_config({"discord": {"shard_count": 2, "shard_ids": [2]}}, {})
    # The process claims the jobs of its shards' guilds; running every shard, any job.
    assert shard_scope(config.discord) == ShardScope(4, frozenset({0, 1}))
    every = load_bot_config({"discord": {"shard_count": 2, "shard_ids": [1, 0]}}, {})
    assert shard_scope(every.discord) is None
    assert shard_scope(load_bot_config({}, {}).discord) is None

    with pytest.raises(ConfigError, match="lease_seconds"):
        load_bot_config({"jobs": {"lease_seconds": 5, "sweep_seconds": 5}}, {})

    class Args:
        shard_count = 4
        shard_ids = _shard_ids("2,3")

    raw = _with_shards({"discord": {"sync_commands": False}}, Args())  # type: ignore[arg-type]
    assert raw == {"discord": {"sync_commands": False, "shard_count": 4, "shard_ids": [2, 3]}}


async def test_a_sharded_bot_runs_and_posts_a_job_once(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    bot = simcord_env.bot
    # The PostgreSQL pass runs this on a real PostgreSQL bot store.
    assert services.store.is_sqlite is (database_backend() != "postgres")
    assert bot.shard_count == 2 and sorted(bot.shards) == [0, 1]  # type: ignore[attr-defined]
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    key = await register(api, "alice@example.com")
    await services.members.save(alice.id, SecretStr(key), via=LinkedVia.LINK)

    await alice.slash(channel, "demo tadz", prompt="a cat")

    [job] = await bot.jobs.store.for_member(alice.id)  # type: ignore[attr-defined]
    assert job.posted_via is Destination.INTERACTION
    assert not bot.jobs.owns(job.id)  # type: ignore[attr-defined]  # the claim ended with the post
    _ = simcord_env.errors
