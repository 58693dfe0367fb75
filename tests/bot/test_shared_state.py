"""Two bot processes over one store: each test builds two independent sets of services
(their own engine, connections, caches and locks) over the same database file, the way
two ``tada-bot`` processes share one, and races them. Nothing that correctness needs may
live in one process's memory: claims, deliveries, quota holds, cooldowns, settings."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from bot.crypto import KeyBox
from bot.errors import UserFacingError
from bot.gate import Action, Feature, GateRequest
from bot.jobs import Destination, JobKind, JobNotFound, JobState, JobStore, ShardScope
from bot.jobs.fairness import fair_order
from bot.policy import Limit, PolicyGate, PolicyStore, QuotaRule
from bot.store import Store
from bot.store.models import utcnow
from tests.waiting import CEILING_S

GUILD = 1000
ALICE = 42
LEASE = timedelta(seconds=30)


@dataclass
class Process:
    """What one bot process holds: its own store engine, policy cache, gate and jobs."""

    store: Store
    policy: PolicyStore
    gate: PolicyGate
    jobs: JobStore


class Clock:
    def __init__(self) -> None:
        self.moment = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.moment


@pytest.fixture
async def two(bot_store_url: str) -> AsyncIterator[tuple[Process, Process]]:
    url = bot_store_url
    keys = KeyBox([SecretStr(Fernet.generate_key().decode())])
    clock = Clock()
    built = []
    for _ in range(2):
        store = Store(url)
        await store.migrate()
        policy = PolicyStore(store)
        built.append(
            Process(store, policy, PolicyGate(policy, keys, clock=clock), JobStore(store, keys))
        )
    try:
        yield built[0], built[1]
    finally:
        for p in built:
            await p.store.close()


def demo(cost: int = 1, guild: int = GUILD) -> GateRequest:
    return GateRequest(
        user_id=ALICE,
        guild_id=guild,
        channel_id=1,
        role_ids=frozenset(),
        feature=Feature.DEMO,
        action=Action.DEMO_GENERATE,
        cost=cost,
        text="a cat",
    )


async def set_rule(p: Process, limit: Limit, amount: int, guild: int = GUILD) -> None:
    rule = QuotaRule(role_id=guild, feature=Feature.DEMO, limit=limit, amount=amount)
    await p.policy.update(guild, lambda s: s.model_copy(update={"quotas": (rule,)}))


async def admitted(*attempts: asyncio.Future[object] | object) -> int:
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)  # type: ignore[arg-type]
    for o in outcomes:
        if isinstance(o, BaseException) and not isinstance(o, UserFacingError):
            raise o
    return sum(not isinstance(o, BaseException) for o in outcomes)


async def test_a_quota_admits_once_when_two_processes_are_asked_at_once(
    two: tuple[Process, Process],
) -> None:
    a, b = two
    await set_rule(a, Limit.IMAGES_PER_DAY, 1)
    # Both processes see the rule, and each admission holds in the shared store.
    assert await admitted(*(p.gate.admit(demo()) for p in (a, b, a, b))) == 1
    # The hold counts in the other process too, until it is recorded there.
    await b.gate.record(demo(), job_id="j" * 32)
    with pytest.raises(UserFacingError):
        await a.gate.admit(demo())
    # Recorded once: the hold became the row (one row, not two).
    assert (
        await a.policy.used(
            GUILD,
            a.gate.member(GUILD, ALICE),
            Feature.DEMO,
            [Action.DEMO_GENERATE],
            a.gate.now() - timedelta(days=1),
        )
        == 1
    )


async def test_one_members_allowances_in_two_guilds_hold_exactly_under_a_race(
    two: tuple[Process, Process],
) -> None:
    a, b = two
    other = GUILD + 1
    await set_rule(a, Limit.IMAGES_PER_DAY, 2)
    await set_rule(b, Limit.IMAGES_PER_DAY, 3, guild=other)
    # Alice asks in both servers at once, through both processes (each server's requests
    # arrive at its shard's process, but the store's holds are what count): each server's
    # allowance is hers there, neither shared nor taken by the other's holds.
    guilds = [g for _ in range(4) for g in (GUILD, other) for _ in (a, b)]
    procs = [p for _ in range(4) for _ in (GUILD, other) for p in (a, b)]
    outcomes = await asyncio.gather(
        *(p.gate.admit(demo(guild=g)) for p, g in zip(procs, guilds, strict=True)),
        return_exceptions=True,
    )
    for o in outcomes:
        if isinstance(o, BaseException) and not isinstance(o, UserFacingError):
            raise o
    won = [g for g, o in zip(guilds, outcomes, strict=True) if not isinstance(o, BaseException)]
    assert (won.count(GUILD), won.count(other)) == (2, 3)


async def test_a_cooldown_holds_across_processes(two: tuple[Process, Process]) -> None:
    a, b = two
    await set_rule(a, Limit.COOLDOWN_SECONDS, 60)
    assert await admitted(a.gate.admit(demo()), b.gate.admit(demo())) == 1
    with pytest.raises(UserFacingError, match="Slow down"):
        await b.gate.admit(demo())


async def test_a_settings_change_shows_in_the_other_process_at_once(
    two: tuple[Process, Process],
) -> None:
    a, b = two
    assert (await b.policy.settings(GUILD)).private_results is False  # cached in b
    await a.policy.update(GUILD, lambda s: s.model_copy(update={"private_results": True}))
    assert (await b.policy.settings(GUILD)).private_results is True
    await b.policy.update(GUILD, lambda s: s.model_copy(update={"private_results": False}))
    assert (await a.policy.settings(GUILD)).private_results is False


async def new_job(p: Process, member: int = ALICE) -> str:
    job = await p.jobs.create(
        user_id=member, guild_id=GUILD, channel_id=1, kind=JobKind.DEMO_GENERATE, params={}
    )
    return job.id


async def test_a_job_is_claimed_by_one_process_only(two: tuple[Process, Process]) -> None:
    a, b = two
    ids = [await new_job(a) for _ in range(20)]
    wins = await asyncio.gather(
        *(p.jobs.claim(j, name, lease=LEASE) for j in ids for p, name in ((a, "a"), (b, "b")))
    )
    assert sum(wins) == len(ids)  # every job once, never twice
    # The holder claims again (a restart under its name); the other cannot.
    first = ids[0]
    holder = "a" if wins[0] else "b"
    other = "b" if holder == "a" else "a"
    assert await a.jobs.claim(first, holder, lease=LEASE)
    assert not await b.jobs.claim(first, other, lease=LEASE)


async def test_a_dead_processs_claim_is_taken_over_after_its_lease(
    two: tuple[Process, Process],
) -> None:
    a, b = two
    job_id = await new_job(a)
    assert await a.jobs.claim(job_id, "a", lease=timedelta(seconds=-1))  # already lapsed
    assert [j.id for j in await b.jobs.takeable("b")] == [job_id]
    assert await b.jobs.claim(job_id, "b", lease=LEASE)
    # "a" wakes up (it was only hung): it may no longer post, and does not.
    with pytest.raises(JobNotFound):
        await a.jobs.begin_post(job_id, "a", Destination.CHANNEL)
    assert await b.jobs.begin_post(job_id, "b", Destination.CHANNEL) is None


async def test_a_delivery_is_recorded_once(two: tuple[Process, Process]) -> None:
    a, b = two
    job_id = await new_job(a)
    records = await asyncio.gather(
        a.jobs.mark_posted(job_id, message_id=1, via=Destination.CHANNEL),
        b.jobs.mark_posted(job_id, message_id=2, via=Destination.CHANNEL),
    )
    assert sorted(records) == [False, True]
    job = await a.jobs.get(job_id)
    assert job.posted and job.result_message_id in (1, 2)
    assert not await b.jobs.claim(job_id, "b", lease=LEASE)  # nothing left to do


async def test_a_post_left_in_doubt_by_a_killed_process_is_seen_by_the_next(
    two: tuple[Process, Process],
) -> None:
    a, b = two
    job_id = await new_job(a)
    await a.jobs.update(job_id, state=JobState.FAILED, error="x")
    assert await a.jobs.claim(job_id, "a", lease=LEASE)
    assert await a.jobs.begin_post(job_id, "a", Destination.CHANNEL) is None
    # SIGKILL here: Discord may have the message, the row does not say so; a's lease
    # runs out with nobody to renew it.
    assert not await b.jobs.claim(job_id, "b", lease=LEASE)
    await a.jobs.update(job_id, lease_until=utcnow() - timedelta(seconds=1))
    assert await b.jobs.claim(job_id, "b", lease=LEASE)
    doubt = await b.jobs.in_doubt(job_id)
    assert doubt is not None and doubt.via is Destination.CHANNEL


async def test_the_shared_queue_is_served_in_one_fair_order(two: tuple[Process, Process]) -> None:
    a, b = two
    burst = [await new_job(a, member=1) for _ in range(3)]
    bob = await new_job(b, member=2)
    snapshot = await b.jobs.queue_snapshot()
    order = [j for _, j in fair_order(snapshot.waiting, snapshot.running, snapshot.served)]
    # Bob, who asked after Alice's burst, is served second, whichever process looks.
    assert order == [burst[0], bob, burst[1], burst[2]]
    assert await a.jobs.claim(burst[0], "a", lease=LEASE, queued_only=True)
    snapshot = await a.jobs.queue_snapshot()
    assert snapshot.running == {1: 1}
    assert (
        next(j for _, j in fair_order(snapshot.waiting, snapshot.running, snapshot.served)) == bob
    )


def on_shard(shard: int, count: int = 2) -> int:
    """A guild id that Discord routes to ``shard`` of ``count``."""
    return (10**6 * count + shard) << 22


async def test_each_process_claims_only_the_jobs_of_its_own_shards(
    two: tuple[Process, Process],
) -> None:
    a, b = two
    # Two processes of one bot, each with one of its two shards: a guild's commands, its
    # cache and its voice connection are on the process that runs the guild's shard, so
    # that process runs and posts the guild's jobs; DMs come in on shard 0.
    keys = KeyBox([SecretStr(Fernet.generate_key().decode())])
    a.jobs = JobStore(a.store, keys, shards=ShardScope(2, frozenset({0})))
    b.jobs = JobStore(b.store, keys, shards=ShardScope(2, frozenset({1})))
    made = {}
    for name, guild in (("g0", on_shard(0)), ("g1", on_shard(1)), ("dm", None)):
        job = await a.jobs.create(
            user_id=ALICE, guild_id=guild, channel_id=1, kind=JobKind.DEMO_GENERATE, params={}
        )
        made[name] = job.id
    assert {j.id for j in await a.jobs.takeable("a")} == {made["g0"], made["dm"]}
    assert {j.id for j in await b.jobs.takeable("b")} == {made["g1"]}
    assert {j for _, j in (await b.jobs.queue_snapshot()).waiting} == {made["g1"]}
    assert not await b.jobs.claim(made["g0"], "b", lease=LEASE, queued_only=True)
    assert not await b.jobs.claim(made["dm"], "b", lease=LEASE)
    assert not await a.jobs.claim(made["g1"], "a", lease=LEASE)
    assert await b.jobs.claim(made["g1"], "b", lease=LEASE, queued_only=True)
    # Even after its owner died (lease run out), a job stays with its shard: the next
    # process on shard 1 (the restarted one, or one on another host) takes it.
    await b.jobs.update(made["g1"], lease_until=utcnow() - timedelta(seconds=1))
    assert not await a.jobs.claim(made["g1"], "a", lease=LEASE)
    assert await b.jobs.claim(made["g1"], "b2", lease=LEASE)
    # A process running every shard (the default, one process) takes any job.
    every = JobStore(a.store, keys)
    assert {j.id for j in await every.takeable("solo")} == {made["g0"], made["dm"]}


CLAIMER = """
import asyncio, sys
from datetime import timedelta
from cryptography.fernet import Fernet
from pydantic import SecretStr
from bot.crypto import KeyBox
from bot.jobs import JobStore
from bot.store import Store

async def main(url, owner, ids):
    store = Store(url)
    jobs = JobStore(store, KeyBox([SecretStr(Fernet.generate_key().decode())]))
    await jobs.get(ids[0])  # connected
    print("ready", flush=True)
    sys.stdin.readline()  # both start together
    won = [j for j in ids if await jobs.claim(j, owner, lease=timedelta(seconds=60))]
    await store.close()
    print(" ".join(won), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3].split(",")))
"""


async def test_two_real_processes_claim_each_job_exactly_once(
    two: tuple[Process, Process], bot_store_url: str
) -> None:
    a, _ = two
    ids = [await new_job(a, member=n % 7) for n in range(60)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLAIMER,
            bot_store_url,
            f"process-{n}",
            # One from each end: they meet in the middle, claiming the same rows at once.
            ",".join(ids if n == 0 else ids[::-1]),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        for n in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), CEILING_S)).strip() == b"ready"
    outs = await asyncio.gather(
        *(asyncio.wait_for(p.communicate(b"go\n"), CEILING_S) for p in procs)
    )
    assert all(p.returncode == 0 for p in procs)
    first, second = (set(out.decode().split()) for out, _ in outs)
    assert first | second == set(ids) and not first & second
