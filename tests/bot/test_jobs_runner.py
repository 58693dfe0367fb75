"""The job runner: fair scheduling, and results that survive Discord failing to take them."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import BotServices, create_bot
from bot.config import BotConfig, ConfigError, load_bot_config
from bot.jobs import Destination, JobKind, JobState
from bot.jobs.fairness import FairQueue
from bot.store import LinkedVia
from bot.store.models import utcnow
from tests.bot.conftest import busy_job, make_bot_config
from tests.conftest import database_backend, register

# Each interaction is settled when the bot's work on it is done; under load (a niced pass
# on a busy machine) that took over SimCord's default 5 s, so a ceiling, not a wait.
pytestmark = pytest.mark.simcord(settle_timeout=120)


@pytest.fixture
def bot_config(tmp_path: Path) -> BotConfig:
    return make_bot_config(
        tmp_path / "bot", jobs={"poll_seconds": 0.05, "post_backoff_seconds": 0.01}
    )


def test_one_members_burst_does_not_starve_the_others() -> None:
    queue = FairQueue(max_running=2, per_member=1)
    for i in range(5):
        queue.push(1, f"a{i}")
    queue.push(2, "b0")
    queue.push(3, "c0")
    # Bob and Carol, who asked after Alice's burst, are served in the first round.
    assert queue.position("b0") == 2 and queue.position("c0") == 3
    assert queue.position("a1") == 4 and queue.position("nope") is None
    assert queue.pop() == (1, "a0")
    assert queue.pop() == (2, "b0")
    assert queue.pop() is None  # both slots taken
    queue.release(1)
    # Alice holds no slot now, but Carol's turn comes before Alice's second job.
    assert queue.pop() == (3, "c0")
    queue.release(2)
    assert queue.pop() == (1, "a1")
    assert queue.pop() is None  # Alice is at her per-member limit
    assert len(queue) == 3 and queue.running == 2


def test_removed_jobs_leave_the_line() -> None:
    queue = FairQueue(max_running=1, per_member=1)
    queue.push(1, "a0")
    queue.push(1, "a1")
    assert queue.remove(1, "a0") and not queue.remove(1, "a0")
    assert queue.position("a1") == 1


async def linked(env: simcord.Env, services: BotServices, api: httpx.AsyncClient):
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))
    key = await register(api, "alice@example.com")
    await services.members.save(alice.id, SecretStr(key), via=LinkedVia.LINK)
    return channel, alice


async def test_discord_500s_on_posting_are_retried_and_posted_once(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    # The follow-up webhook keeps failing; the channel fails twice, then takes it.
    simcord_env.inject_error("POST", "/webhooks/*", status=500, times=None)
    simcord_env.inject_error("POST", "/channels/*/messages", status=500, times=2)

    await alice.slash(channel, "demo tadz", prompt="a cat")

    [job] = await simcord_env.bot.jobs.store.for_member(alice.id)  # type: ignore[attr-defined]
    # The test engine has no demo model configured: the failure, with its reason, is the
    # result, and it is delivered like one (the operator's instructions stay in the log).
    assert job.state is JobState.FAILED and "not set up" in (job.error or "")
    assert "[engine." not in (job.error or "")
    assert job.posted_via is Destination.CHANNEL
    posted = [m for m in channel.history() if "failed" in m.content]
    assert len(posted) == 1 and alice.mention in posted[0].content
    assert posted[0].id == job.result_message_id
    _ = simcord_env.errors


async def test_a_forbidden_channel_falls_back_to_a_dm(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    simcord_env.inject_error("POST", "/webhooks/*", status=404, code=10015, times=None)
    simcord_env.inject_error("POST", "/channels/*/messages", status=403, code=50013, times=1)

    await alice.slash(channel, "demo pudgy", prompt="a penguin")

    [job] = await simcord_env.bot.jobs.store.for_member(alice.id)  # type: ignore[attr-defined]
    assert job.posted_via is Destination.DM
    dm = alice.user.dm_channel.last_message
    assert dm is not None and dm.id == job.result_message_id and "failed" in dm.content
    assert not any("failed" in m.content for m in channel.history())
    _ = simcord_env.errors


async def test_a_member_without_an_account_is_told_to_link_and_nothing_is_saved(
    simcord_env: simcord.Env, services: BotServices
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    bob = guild.add_member(simcord_env.create_user("bob"))
    result = await bob.slash(channel, "demo tadz", prompt="a cat")
    assert result.ephemeral and result.response is not None
    assert "/tada link" in result.response.content
    assert await simcord_env.bot.jobs.store.for_member(bob.id) == []  # type: ignore[attr-defined]
    _ = simcord_env.errors


async def test_a_member_waiting_for_a_slot_sees_their_place_in_line(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    runner = simcord_env.bot.jobs  # type: ignore[attr-defined]
    runner.queue.max_running = 0  # this process's slots are all taken
    # Bob's job runs in another process; another of his waits, queued before Alice asks.
    await busy_job(runner, 1)
    waiting = await runner.store.create(
        user_id=1, guild_id=None, channel_id=None, kind=JobKind.DEMO_GENERATE, params={}
    )

    asked = await alice.slash(channel, "demo tadz", prompt="a cat")

    assert asked.ephemeral and asked.response is not None
    # Round-robin: Alice comes before Bob's second job.
    assert "number 1 in line" in asked.response.content
    [job] = await runner.store.for_member(alice.id)
    assert job.state is JobState.QUEUED and await runner.position(job.id) == 1
    assert await runner.position(waiting.id) == 2


async def test_forget_deletes_the_members_jobs_too(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    await alice.slash(channel, "demo tadz", prompt="a cat")
    store = simcord_env.bot.jobs.store  # type: ignore[attr-defined]
    assert len(await store.for_member(alice.id)) == 1

    asked = await alice.slash(channel, "tada forget")
    assert asked.response is not None
    await alice.click(asked.response, label="Delete my data")

    assert await store.for_member(alice.id) == []
    assert await services.members.get(alice.id) is None


def test_the_jobs_section_of_the_config_file_is_read_and_checked() -> None:
    config = load_bot_config({"jobs": {"max_concurrent": 3, "per_member": 1}}, {})
    assert (config.jobs.max_concurrent, config.jobs.per_member) == (3, 1)
    with pytest.raises(ConfigError, match="max_concurrent"):
        load_bot_config({"jobs": {"max_concurrent": 0}}, {})


# A shorter settle deadline: the delivery's next round must stay parked beyond it until the
# test advances the clock (with 120 s the settle waited it out: 61 s instead of 1 s).
@pytest.mark.simcord(settle_timeout=30)
async def test_when_discord_takes_nothing_the_result_is_posted_in_a_later_round(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    for method, path in (
        ("POST", "/webhooks/*"),
        ("POST", "/channels/*/messages"),
        ("POST", "/users/@me/channels"),
    ):
        simcord_env.inject_error(method, path, status=503, times=None)

    await alice.slash(channel, "demo tadz", prompt="a cat")
    store = simcord_env.bot.jobs.store  # type: ignore[attr-defined]
    [job] = await store.for_member(alice.id)
    assert job.state is JobState.FAILED and not job.posted

    simcord_env.backend.faults.clear()  # Discord is back
    await simcord_env.advance_time(60)

    job = await store.get(job.id)
    # A minute later the interaction's token is still valid: the first choice again.
    assert job.posted_via is Destination.INTERACTION
    assert sum("failed" in m.content for m in channel.history()) == 1
    _ = simcord_env.errors


@pytest.mark.skipif(
    database_backend() == "postgres", reason="reads the bot's SQLite file (SQLite pass only)"
)
@pytest.mark.simcord(settle_timeout=30)  # as above
async def test_interaction_tokens_are_kept_encrypted_and_still_post_after_a_restart(
    simcord_env: simcord.Env,
    services: BotServices,
    bot_config: BotConfig,
    api: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    channel, alice = await linked(simcord_env, services, api)
    for method, path in (
        ("POST", "/webhooks/*"),
        ("POST", "/channels/*/messages"),
        ("POST", "/users/@me/channels"),
    ):
        simcord_env.inject_error(method, path, status=503, times=None)

    await alice.slash(channel, "demo tadz", prompt="a cat")
    runner = simcord_env.bot.jobs  # type: ignore[attr-defined]
    [job] = await runner.store.for_member(alice.id)
    token = runner._interactions[job.id].token
    assert not job.posted and len(token) > 20

    # While the job waits for Discord, its token is in the store only as ciphertext.
    db_path = bot_config.data_dir / "bot.sqlite3"
    raw = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))
    assert token.encode() not in raw
    with sqlite3.connect(db_path) as db:
        assert token not in "\n".join(db.iterdump())
        [(sealed,)] = db.execute("select interaction_token_encrypted from bot_jobs").fetchall()
    assert sealed and token.encode() not in sealed
    assert token not in repr(job) and token not in repr(runner.store)

    # A new process (no live interaction) decrypts it and posts through the interaction.
    simcord_env.backend.faults.clear()
    await simcord_env.restart_bot(create_bot(services))
    await simcord_env.settle()
    job = await simcord_env.bot.jobs.store.get(job.id)  # type: ignore[attr-defined]
    assert job.posted_via is Destination.INTERACTION
    with sqlite3.connect(db_path) as db:
        [(cleared,)] = db.execute("select interaction_token_encrypted from bot_jobs").fetchall()
    assert cleared is None
    assert token not in caplog.text
    _ = simcord_env.errors


async def test_a_dead_processs_jobs_are_taken_over_and_posted_once(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    runner = simcord_env.bot.jobs  # type: ignore[attr-defined]
    guild_id = channel.guild.id  # type: ignore[union-attr]
    # A demo another bot process was making when it was killed: its lease has run out.
    dead = await runner.store.create(
        user_id=alice.id,
        guild_id=guild_id,
        channel_id=channel.id,
        kind=JobKind.DEMO_GENERATE,
        params={"model": "tadz", "prompt": "a cat"},
    )
    assert await runner.store.claim(dead.id, "killed-process", lease=timedelta(seconds=-1))
    await runner.store.update(dead.id, state=JobState.RUNNING, started_at=utcnow())
    # A job a live process holds is left alone.
    live = await busy_job(runner, alice.id)
    before = len(channel.history())

    await runner.sweep()
    await runner.drain()
    await simcord_env.settle()

    taken = await runner.store.get(dead.id)
    # Demos cannot be found again on Ta-da: posted as interrupted, with a Retry button.
    assert taken.state is JobState.INTERRUPTED and taken.posted_via is Destination.CHANNEL
    assert len(channel.history()) == before + 1
    # Later sweeps (this process's or another's) post nothing more.
    await runner.sweep()
    await runner.drain()
    await simcord_env.settle()
    assert len(channel.history()) == before + 1
    assert (await runner.store.get(live)).state is JobState.RUNNING
    assert not await runner.store.claim(live, runner.owner, lease=timedelta(seconds=30))


async def test_a_post_left_in_doubt_is_sent_again_with_the_same_nonce(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    from bot.jobs.deliver import post_nonce

    channel, alice = await linked(simcord_env, services, api)
    runner = simcord_env.bot.jobs  # type: ignore[attr-defined]
    job = await runner.store.create(
        user_id=alice.id,
        guild_id=channel.guild.id,  # type: ignore[union-attr]
        channel_id=channel.id,
        kind=JobKind.DEMO_GENERATE,
        params={"model": "tadz", "prompt": "a cat"},
    )
    await runner.store.update(job.id, state=JobState.FAILED, error="It failed.")
    # A process began posting it in the channel and was killed before recording it.
    assert await runner.store.claim(job.id, "killed-process", lease=timedelta(seconds=30))
    await runner.store.begin_post(job.id, "killed-process", Destination.CHANNEL)
    await runner.store.update(job.id, lease_until=utcnow() - timedelta(seconds=1))

    await runner.sweep()
    await runner.drain()
    await simcord_env.settle()

    posts = [
        r for r in simcord_env.http_requests if r.method == "POST" and r.path.endswith("/messages")
    ]
    # Discord (enforce_nonce) answers a repeat of that nonce with the message it made.
    assert [(r.json or {}).get("nonce") for r in posts] == [str(post_nonce(job.id))]
    assert all((r.json or {}).get("enforce_nonce") for r in posts)
    done = await runner.store.get(job.id)
    assert done.posted_via is Destination.CHANNEL and await runner.store.in_doubt(job.id) is None
    _ = simcord_env.errors


async def test_a_follow_up_left_in_doubt_is_found_in_the_channel_and_not_posted_again(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    runner = simcord_env.bot.jobs  # type: ignore[attr-defined]

    # The process is killed just after Discord took the result's follow-up, before the row
    # records it: the follow-up is in the channel, the row says "in doubt".
    async def killed(job_id: str, **_: object) -> bool:
        raise asyncio.CancelledError

    runner.store.mark_posted = killed
    await alice.slash(channel, "demo tadz", prompt="a cat")
    [job] = await runner.store.for_member(alice.id)
    assert not job.posted and await runner.store.in_doubt(job.id) is not None
    # Follow-ups have no nonce: the next process looks for the message it may have made.
    await simcord_env.restart_bot(create_bot(services))
    await simcord_env.settle()

    posts = [
        r.path
        for r in simcord_env.http_requests
        if r.method == "POST" and (r.path.startswith("/webhooks/") or r.path.endswith("/messages"))
    ]
    # The result: the demo is not set up on the test engine (said without a Retry button).
    results = [m for m in channel.history() if "The Tadz demo is not set up" in m.content]
    assert len(results) == 1, (posts, results)
    job = await simcord_env.bot.jobs.store.get(job.id)  # type: ignore[attr-defined]
    assert job.posted_via is Destination.INTERACTION and job.result_message_id == results[0].id
    _ = simcord_env.errors
