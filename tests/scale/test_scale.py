"""The whole production layout on one machine: two bot processes, each running one of the
bot's two shards in its own SimCord environment and guild, over one PostgreSQL bot store;
two engine API processes and two engine workers over PostgreSQL and Redis
(:mod:`tests.scale.cluster`). Members use slash commands, and as many again use the HTTP
API directly (register, clone, speak, draw); one worker is SIGKILLed mid-run and started
again, and each bot process is cut off mid-run and started again.

SimCord runs one bot per event loop, so each bot "process" is a thread with its own loop,
its own SimCord environment and its own bot services (store connections, Ta-da client to
its own API process). Not a subprocess: the members' side (SimCord) must live in the bot's
process, and a SIGKILLed subprocess would take the simulated Discord (the channels the
results go to) with it. A bot is instead cut off hard (its runner's tasks cancelled where
they stand) and started again on the same store, as a restarted process would be.

Target: every member's result posted exactly once, in their own channel, by the process
that runs their guild's shard (:class:`bot.jobs.ShardScope`); every engine job finished,
none lost, none made twice, each HTTP member answered with what is stored; each member's
allowance counted exactly (the request past it refused, privately). ``bench/scale.py``
runs the same layout with 200 members for throughput figures.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import simcord
from cryptography.fernet import Fernet
from pydantic import SecretStr

from bot.app import create_bot, open_services
from bot.config import BotConfig
from bot.gate import Feature
from bot.jobs import JobState
from bot.policy import Limit
from bot.store import LinkedVia, Store
from tests.bot.conftest import make_bot_config
from tests.bot.media_samples import speech_wav
from tests.bot.policy_world import take_refusals
from tests.scale.cluster import (
    STALE_AFTER_SECONDS,
    Cluster,
    cluster,
    register_and_clone,
    run_members,
    short_sample,
)
from tests.servers import PostgresServer

pytestmark = pytest.mark.slow(70)

SHARDS = 2  # one bot, two shards, one process each
MEMBERS_PER_BOT = 3
HTTP_MEMBERS = SHARDS * MEMBERS_PER_BOT  # as many again, through the API alone, at once
ROUNDS = 2  # each member asks for one speech and one demo image per round
BOT_SECONDS = 300.0
KILL_AFTER_DONE = 2 * MEMBERS_PER_BOT + 4  # the clones and a few more: under way
START_LOCK = threading.Lock()


@dataclass
class Posted:
    """What one bot's members saw: per member, the result messages that mention them."""

    bot: int
    channel_id: int = 0
    results: dict[int, list[str]] = field(default_factory=dict)
    # Every REST path this bot's processes called (SimCord's log of the bot's requests).
    requests: list[str] = field(default_factory=list)
    jobs: list[tuple[str, JobState, bool]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def _member_round(
    member: simcord.MemberActor, channel: simcord.ChannelHandle, voice_id: str, n: int
) -> None:
    await member.slash(channel, "voice speak", voice=voice_id, text=f"Line {n} of {member.name}.")
    await member.slash(channel, "demo tadz", prompt=f"{member.name} {n}")


async def run_bot(
    index: int,
    bot_config: BotConfig,
    base_url: str,
    sample: bytes,
    barriers: tuple[threading.Barrier, threading.Barrier],
) -> Posted:
    """One bot process (shard ``index - 1``): its services, SimCord environment and guild."""
    started, restart = barriers
    posted = Posted(index)
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(BOT_SECONDS, connect=10))
        )
        # One at a time: Alembic keeps its migration context in module globals, so two
        # migrations in threads of one process collide (each real process has its own).
        await asyncio.to_thread(START_LOCK.acquire)
        try:
            services = await stack.enter_async_context(
                open_services(bot_config, http=http, base_url=base_url)
            )
        finally:
            START_LOCK.release()
        env = simcord.Env(create_bot(services), settle_timeout=BOT_SECONDS)
        await env.start()
        stack.push_async_callback(_shutdown, env, posted)
        # Apart in Discord's ids: the two environments' clocks make the same snowflakes.
        await env.advance_time(60 * index)
        guild = env.create_guild(f"guild {index}", shard_id=index - 1)
        channel = guild.create_text_channel("general")
        assert services.policy is not None
        await services.policy.set_quota(
            guild.id, guild.id, Feature.DEMO, Limit.IMAGES_PER_DAY, ROUNDS
        )
        members, voices = [], []
        for j in range(MEMBERS_PER_BOT):
            member = guild.add_member(env.create_user(f"b{index}m{j}"))
            email = f"{member.name}-{uuid.uuid4().hex[:6]}@example.com"
            key, voice_id = await register_and_clone(http, email, sample)
            await services.members.save(member.id, SecretStr(key), via=LinkedVia.LINK)
            members.append(member)
            voices.append(voice_id)
        await asyncio.to_thread(started.wait, BOT_SECONDS)  # both bots run their rounds together
        for n in range(ROUNDS):
            for member, voice_id in zip(members, voices, strict=True):
                await _member_round(member, channel, voice_id, n)
            if n > 0:
                continue
            if index == 2:
                # Cut off and started again just after the other bot's process died with
                # jobs saved, and before that one is back.
                await asyncio.to_thread(restart.wait, BOT_SECONDS)
                await _cut_off_and_restart(env, services)
                await asyncio.to_thread(restart.wait, BOT_SECONDS)
                continue
            # This bot's process dies with a job per member saved but not yet run
            # (runner.submit saves the row before any Ta-da call); the other bot starts
            # again meanwhile and must leave them (not its shard); then this one starts.
            runner = env.bot.jobs  # type: ignore[attr-defined]
            for member in members:
                request = runner.demo_request("tadz", f"{member.name} left over")
                await runner.store.create(
                    user_id=member.id,
                    guild_id=guild.id,
                    channel_id=channel.id,
                    kind=request.kind,
                    params=request.params,
                )
            await asyncio.to_thread(restart.wait, BOT_SECONDS)
            await asyncio.to_thread(restart.wait, BOT_SECONDS)
            await _cut_off_and_restart(env, services)
        # One image past the allowance each: refused, privately, before any Ta-da call.
        for member in members:
            refused = await member.slash(channel, "demo tadz", prompt="one too many")
            assert refused.ephemeral and refused.response is not None
            posted.refused.append(refused.response.content)
        await env.settle()
        take_refusals(env)  # reported as handled errors, not left for shutdown
        for member in members:
            posted.results[member.id] = [
                m.content for m in channel.history() if member.mention in m.content
            ]
        posted.channel_id = channel.id
        posted.requests = [f"{r.method} {r.path}" for r in env.http_requests]
        store = env.bot.jobs.store  # type: ignore[attr-defined]
        for member in members:
            posted.jobs += [(j.id, j.state, j.posted) for j in await store.for_member(member.id)]
    return posted


async def _shutdown(env: simcord.Env, posted: Posted) -> None:
    try:
        await env.shutdown()
    except BaseException as exc:  # a bot error: reported, not hidden
        posted.errors.append(repr(exc))


async def _cut_off_and_restart(env: simcord.Env, services: Any) -> None:
    """The bot process dies (its runner's tasks cancelled where they stand, its claims
    left in the store with their leases, as a SIGKILL leaves them) and a new one starts on
    the same store."""
    runner = env.bot.jobs  # type: ignore[attr-defined]

    async def killed(owner: str, job_ids: set[str]) -> None:
        """A killed process hands nothing back."""

    runner.store.release_all = killed
    for task in list(runner._tasks):
        task.cancel()
    await env.restart_bot(create_bot(services))


def _in_thread(make: Callable[[], Awaitable[Posted]]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def main() -> None:
        try:
            out.append(asyncio.run(make()))  # type: ignore[arg-type]
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=main, name="bot", daemon=True)
    thread.start()
    return thread, out


async def _kill_a_worker_mid_run(c: Cluster, threads: list[threading.Thread]) -> int:
    """SIGKILL the first worker once the run is under way, start it again; the number of
    engine jobs queued or running when it died."""
    deadline = time.monotonic() + BOT_SECONDS
    while True:
        [(done,)] = await asyncio.to_thread(
            c.query, "SELECT count(*) FROM jobs WHERE status = 'succeeded'"
        )
        if done >= KILL_AFTER_DONE or not any(t.is_alive() for t in threads):
            break
        assert time.monotonic() < deadline, f"only {done} engine jobs finished"
        await asyncio.sleep(0.2)
    [(busy,)] = await asyncio.to_thread(
        c.query, "SELECT count(*) FROM jobs WHERE status IN ('queued', 'processing')"
    )
    c.workers[0].kill()
    await asyncio.sleep(STALE_AFTER_SECONDS / 3)
    c.workers[0].start()
    return int(busy)


async def test_two_bot_processes_over_the_whole_layout_post_every_result_exactly_once(
    tmp_path: Path, postgres: PostgresServer, postgres_url: str, redis_url: str
) -> None:
    sample = short_sample(await speech_wav())
    store_db = f"bots_{uuid.uuid4().hex[:12]}"
    store_url = postgres.create_database(store_db)
    store = Store(store_url)
    await store.migrate()  # once, before two bots start on it
    await store.close()
    barriers = (threading.Barrier(SHARDS), threading.Barrier(SHARDS))
    # One encryption key for both, as one deployment's env file gives every bot process.
    shared_key = Fernet.generate_key().decode()
    with cluster(tmp_path / "cluster", database_url=postgres_url, redis_url=redis_url) as c:
        threads = []
        for index in (1, 2):
            config = make_bot_config(
                tmp_path / f"bot{index}",
                store={"database_url": store_url, "encryption_keys": [shared_key]},
                discord={"shard_count": SHARDS, "shard_ids": [index - 1]},
                jobs={"poll_seconds": 0.05, "post_backoff_seconds": 0.01},
            )
            base = c.bases[index - 1]  # each bot process talks to its own API process
            threads.append(
                _in_thread(lambda i=index, cf=config, b=base: run_bot(i, cf, b, sample, barriers))
            )
        http_members = asyncio.create_task(run_members(c.bases, HTTP_MEMBERS, sample))
        busy = await _kill_a_worker_mid_run(c, [t for t, _ in threads])
        runs = await asyncio.wait_for(http_members, timeout=BOT_SECONDS)
        for thread, _ in threads:
            await asyncio.to_thread(thread.join, BOT_SECONDS + 60)
        await asyncio.to_thread(c.wait_worker, c.workers[0])
        logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in [*c.workers, *c.apis])
        results = [
            out[0] if out else TimeoutError("bot thread still running") for _, out in threads
        ]
        crashed = [r for r in results if isinstance(r, BaseException)]
        if crashed:
            raise BaseExceptionGroup(f"a bot crashed\n{logs}", crashed)
        posted: list[Posted] = results
        for bot in posted:
            assert not bot.errors, bot.errors
            assert len(bot.results) == MEMBERS_PER_BOT
            left_over = 1 if bot.bot == 1 else 0
            for member, messages in bot.results.items():
                # One speech and one image per round (and the left-over image), each posted
                # once, by the member's own bot, nothing else.
                assert len(messages) == 2 * ROUNDS + left_over, (bot.bot, member, messages, logs)
            assert len(bot.jobs) == (2 * ROUNDS + left_over) * MEMBERS_PER_BOT
            assert all(state is JobState.FINISHED and done for _, state, done in bot.jobs), bot.jobs
            # The allowance exactly: the image past it refused, once per member.
            allowance = [r for r in bot.refused if "used all your Demo allowance" in r]
            assert len(allowance) == MEMBERS_PER_BOT, bot.refused
        # Each process posted only in its own shard's guild: no request for the other's.
        for bot, other in (posted, posted[::-1]):
            strays = [r for r in bot.requests if f"/channels/{other.channel_id}/" in r]
            assert not strays, (bot.bot, strays)
        # The engine's truth: every job finished once, nothing made twice. Bot members
        # cloned once and made a speech and an image per round (bot 1's members the
        # left-over image too); HTTP members a voice, a speech and an image each.
        assert busy > 0, "the worker was killed after the run, not during it"
        failed = [(r.email, r.errors) for r in runs if r.errors]
        assert not failed, (failed[:5], logs)
        bot_members = SHARDS * MEMBERS_PER_BOT
        expected = {
            "voices": bot_members + HTTP_MEMBERS,
            "voice_generations": bot_members * ROUNDS + HTTP_MEMBERS,
            "lora_generations": bot_members * ROUNDS + MEMBERS_PER_BOT + HTTP_MEMBERS,
        }
        for table, count in expected.items():
            [(stored,)] = c.query(f"SELECT count(*) FROM {table}")
            assert stored == count, (table, stored, count, logs)
        statuses = c.query("SELECT status, count(*) FROM jobs GROUP BY status")
        assert dict(statuses) == {"succeeded": sum(expected.values())}, (statuses, logs)
        # Each HTTP member was answered with the very rows stored for them.
        answered = {r.speech_id for r in runs} | {r.image_id for r in runs}
        stored_ids = {
            str(i)
            for table in ("voice_generations", "lora_generations")
            for (i,) in c.query(f"SELECT id FROM {table}")
        }
        assert answered <= stored_ids and len(answered) == 2 * HTTP_MEMBERS
        assert c.workers[0].starts == 2 and all(p.alive for p in [*c.workers, *c.apis])
        [(retried,)] = c.query("SELECT count(*) FROM jobs WHERE attempts > 1")
        print(f"scale: {sum(expected.values())} engine jobs, {retried} retried after the kill")
