"""Two bots over one shared store: each in its own SimCord environment with its own guild,
one PostgreSQL bot store, one engine database and queue (PostgreSQL, Redis).

SimCord runs one bot per event loop, so each "bot process" here is a thread with its own
loop, its own SimCord environment, its own bot services (store connections, Ta-da client)
and its own engine API with a job consumer over the shared engine database and queue (the
engine's processes are tested for real in test_engine_scale.py). Not a subprocess: the
members' side (SimCord) must live in the bot's process, and a SIGKILLed subprocess would
take the simulated Discord, the channels the results go to, with it. The second bot is
instead cut off hard mid-run (its runner's tasks cancelled, no settling) and started again
on the same store, as a restarted process would be.

Target: every member's result posted exactly once, in their own channel; every engine job
made once; each member's allowance counted exactly. Claims, leases and the record of each
post are in the shared store (bot/jobs/store.py), so two runners over the same rows never
both run or both post a job.
"""

from __future__ import annotations

import asyncio
import os
import threading
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
from bot.jobs import JobState
from bot.store import LinkedVia, Store
from engine.settings import EngineSettings, JobSettings
from tests.bot.conftest import ENGINE_URL, make_bot_config
from tests.bot.media_samples import speech_wav
from tests.conftest import RELAXED_LIMITS, make_settings, running_engine
from tests.scale.cluster import query, short_sample, train_demo_lora
from tests.servers import PostgresServer

MEMBERS_PER_BOT = 3
ROUNDS = 2  # each member asks for one speech and one demo image per round
BOT_SECONDS = 240.0
START_LOCK = threading.Lock()


def engine_settings(
    data_dir: Path, database_url: str, redis_url: str, lora: Path, consumers: int
) -> EngineSettings:
    return make_settings(
        data_dir,
        database_url=database_url,
        jobs=JobSettings(
            backend="redis",
            redis_url=redis_url,
            split_queues=True,
            in_process_workers=consumers,
            wait_timeout_seconds=120,
            # No engine process is killed here: a heartbeat that a loaded 2-core machine
            # delays must not hand a running job to another consumer (which would make it
            # twice; the engine's queue is at-least-once for a worker that stalls).
            heartbeat_seconds=2,
            stale_after_seconds=60,
        ),
        limits=RELAXED_LIMITS.model_copy(update={"storage_uri": redis_url}),
        voice={"preload": False, "spectral_mapping": False},
        image={
            "generation": {"steps": 1},
            "demos": {"tadz": {"lora_path": str(lora), "trigger_word": "tadz"}},
        },
    )


@dataclass
class Posted:
    """What one bot's members saw: per member, the result messages that mention them."""

    bot: int
    channel_id: int = 0
    results: dict[int, list[str]] = field(default_factory=dict)
    # Every REST path this bot's processes called (SimCord's log of the bot's requests).
    requests: list[str] = field(default_factory=list)
    jobs: list[tuple[str, JobState, bool]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def _member_round(
    member: simcord.MemberActor, channel: simcord.ChannelHandle, voice_id: str, n: int
) -> None:
    await member.slash(channel, "voice speak", voice=voice_id, text=f"Line {n} of {member.name}.")
    await member.slash(channel, "demo tadz", prompt=f"{member.name} {n}")


async def run_bot(
    index: int,
    bot_config: BotConfig,
    settings: EngineSettings,
    sample: bytes,
    cut_off: bool,
    started: threading.Barrier,
    restart: threading.Barrier,
) -> Posted:
    """One bot "process": its engine API, its services, its SimCord environment and guild."""
    posted = Posted(index)
    async with AsyncExitStack() as stack:
        # One at a time: Alembic keeps its migration context in module globals, so two
        # migrations in threads of one process collide (each real process has its own).
        await asyncio.to_thread(START_LOCK.acquire)
        try:
            _, api = await stack.enter_async_context(running_engine(settings))
            services = await stack.enter_async_context(
                open_services(bot_config, http=api, base_url=ENGINE_URL)
            )
        finally:
            START_LOCK.release()
        env = simcord.Env(create_bot(services), settle_timeout=BOT_SECONDS)
        await env.start()
        stack.push_async_callback(_shutdown, env, posted)
        # Apart in Discord's ids: the two environments' clocks make the same snowflakes.
        await env.advance_time(60 * index)
        guild = env.create_guild(f"guild {index}", id=10**17 + index)
        channel = guild.create_text_channel("general")
        members, voices = [], []
        for j in range(MEMBERS_PER_BOT):
            member = guild.add_member(env.create_user(f"b{index}m{j}"))
            key = (
                await api.post(
                    "/api/users/register",
                    params={"email": f"b{index}m{j}-{uuid.uuid4().hex[:6]}@example.com"},
                )
            ).json()["api_key"]
            await services.members.save(member.id, SecretStr(key), via=LinkedVia.LINK)
            h = {"X-API-Key": key}
            target = (
                await api.post(
                    "/api/voices/uploads/url",
                    params={"name": member.name, "file_name": "s.wav"},
                    headers=h,
                )
            ).json()
            parts = httpx.URL(target["upload_url"])
            await api.put(parts.raw_path.decode(), content=sample, headers=target["headers"])
            cloned = await api.post(
                "/api/voices/uploads", params={"upload_id": target["id"]}, headers=h
            )
            assert cloned.status_code == 200, cloned.text
            members.append(member)
            voices.append(cloned.json()["id"])
        await asyncio.to_thread(started.wait, BOT_SECONDS)  # both bots run their rounds together
        for n in range(ROUNDS):
            for member, voice_id in zip(members, voices, strict=True):
                await _member_round(member, channel, voice_id, n)
            if n > 0:
                continue
            if cut_off:
                # Cut off and started again just after the other bot's process died
                # with jobs saved, and before that one is back.
                await asyncio.to_thread(restart.wait, BOT_SECONDS)
                await _cut_off_and_restart(env, services)
                await asyncio.to_thread(restart.wait, BOT_SECONDS)
                continue
            # This bot's process dies with a job per member saved but not yet run
            # (runner.submit saves the row before any Ta-da call); the other bot starts
            # again meanwhile, then this one: two runners, the same rows.
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
    """The bot process dies (its runner's tasks cancelled where they stand) and a new one
    starts on the same store."""
    runner = env.bot.jobs  # type: ignore[attr-defined]
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


# Today: the restarted second bot takes the first bot's left-over rows from the shared store
# and posts their results in the first bot's channel (3 stray POSTs; a second copy of each
# result on Discord), while the first bot posts them too.
# Not in `make test` yet: on the merged claims it still misses one left-over result of a
# member (4 of 5 posted) and the two engines of one process race loading their image models
# ("Cannot copy out of meta tensor"); both are open in issue 18's note. Run it with
# TADA_SCALE_BOTS=1.
@pytest.mark.skipif(not os.environ.get("TADA_SCALE_BOTS"), reason="issue 18: bot half open")
async def test_two_bots_over_one_store_post_every_result_exactly_once(
    tmp_path: Path, postgres: PostgresServer, postgres_url: str, redis_url: str
) -> None:
    sample = short_sample(await speech_wav())
    lora = await asyncio.to_thread(train_demo_lora, tmp_path / "tadz.safetensors")
    store_db = f"bots_{uuid.uuid4().hex[:12]}"
    store_url = postgres.create_database(store_db)
    store = Store(store_url)
    await store.migrate()  # once, before two bots start on it
    await store.close()
    started, restart = threading.Barrier(2), threading.Barrier(2)
    # One encryption key for both, as one deployment's env file gives every bot process.
    shared_key = Fernet.generate_key().decode()
    threads = []
    for index in (1, 2):
        config = make_bot_config(
            tmp_path / f"bot{index}",
            store={"database_url": store_url, "encryption_keys": [shared_key]},
            jobs={"poll_seconds": 0.05, "post_backoff_seconds": 0.01},
        )
        # One engine data directory (local storage, as the engine processes of one machine
        # share it) and one signing key in it.
        # Each bot's engine API with a job consumer of its own, over the shared queue.
        settings = engine_settings(tmp_path / "engine", postgres_url, redis_url, lora, consumers=1)
        threads.append(
            _in_thread(
                lambda i=index, c=config, s=settings: run_bot(
                    i, c, s, sample, i == 2, started, restart
                )
            )
        )
    for thread, _ in threads:
        await asyncio.to_thread(thread.join, BOT_SECONDS + 60)
    results = [out[0] if out else TimeoutError("bot thread still running") for _, out in threads]
    crashed = [r for r in results if isinstance(r, BaseException)]
    if crashed:
        raise BaseExceptionGroup("a bot crashed", crashed)
    posted: list[Posted] = results
    for bot in posted:
        assert not bot.errors, bot.errors
        assert len(bot.results) == MEMBERS_PER_BOT
        left_over = 1 if bot.bot == 1 else 0
        for member, messages in bot.results.items():
            # One speech and one image per round (and the left-over image), each posted
            # once, by the member's own bot, nothing else.
            assert len(messages) == 2 * ROUNDS + left_over, (bot.bot, member, messages)
        assert len(bot.jobs) == (2 * ROUNDS + left_over) * MEMBERS_PER_BOT
        assert all(state is JobState.FINISHED and done for _, state, done in bot.jobs), bot.jobs
    # Jobs are claimed globally (any process may run a queued job and post it through
    # Discord's REST API): a process may try to post a result in the other's guild. On
    # Discord that post lands, is recorded and is the only one; here each bot has its own
    # SimCord world, which answers "unknown channel", so the job goes back and the bot whose
    # world holds the channel posts it. What must hold either way is asserted above (each
    # result once, in its member's channel, every job finished) and below (each request
    # made once): no such attempt may have become a message.
    for bot, other in (posted, posted[::-1]):
        strays = [r for r in bot.requests if f"/channels/{other.channel_id}/" in r]
        assert all(r.startswith("POST ") for r in strays), (bot.bot, strays)
    # The engine made each request once: no job of one bot run again by the other.
    [(speeches,)] = query(postgres_url, "SELECT count(*) FROM voice_generations")
    [(images,)] = query(postgres_url, "SELECT count(*) FROM lora_generations")
    assert speeches == 2 * MEMBERS_PER_BOT * ROUNDS
    assert images == 2 * MEMBERS_PER_BOT * ROUNDS + MEMBERS_PER_BOT
