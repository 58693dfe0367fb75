"""Benchmark: what the policy gate adds to every creation request.

A guild configured like a busy community (channel and role lists, quotas and a cooldown
for several roles, the built-in words plus 200 of its own and 20 patterns), a usage table
with a history, and members asking concurrently. Prints the time per ``admit`` and per
``record`` (p50/p99) on a real SQLite file and writes bench/results/gate.json.

    python bench/gate.py [--requests 2000] [--members 50] [--history 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.fernet import Fernet
from pydantic import SecretStr

from bot.crypto import KeyBox
from bot.errors import UserFacingError
from bot.gate import Action, Feature, GateRequest
from bot.policy import Limit, Moderation, PolicyGate, PolicyStore, QuotaRule
from bot.policy.models import UsageRow
from bot.store import Store

RESULTS = Path(__file__).parent / "results"
GUILD = 1
CHANNELS = tuple(range(100, 110))
ROLES = tuple(range(200, 210))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(requests: int, members: int, history: int) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite+aiosqlite:///{Path(tmp) / 'bot.sqlite3'}")
        await store.migrate()
        policy = PolicyStore(store)
        now = datetime(2026, 6, 15, 12, tzinfo=UTC)
        gate = PolicyGate(
            policy, KeyBox([SecretStr(Fernet.generate_key().decode())]), clock=lambda: now
        )
        rules = tuple(
            QuotaRule(role_id=role, feature=feature, limit=limit, amount=amount)
            for role in (GUILD, *ROLES[:3])
            for feature, limit, amount in (
                (Feature.LORA, Limit.IMAGES_PER_DAY, 10_000),
                (Feature.LORA, Limit.TRAININGS_PER_MONTH, 100),
                (Feature.VOICE, Limit.VOICE_CHARACTERS_PER_DAY, 10_000_000),
                (Feature.DEMO, Limit.IMAGES_PER_DAY, 10_000),
            )
        )
        moderation = Moderation(
            blocked_words=tuple(f"badword{i}" for i in range(200)),
            blocked_patterns=tuple(rf"\bspam{i}\w*" for i in range(20)),
        )
        await policy.update(
            GUILD,
            lambda s: s.model_copy(
                update={
                    "channels": {f: CHANNELS for f in Feature},
                    "roles": {f: ROLES for f in Feature},
                    "quotas": rules,
                    "moderation": moderation,
                }
            ),
        )
        # Earlier use over the last month: the sums run over a real table.
        async with store.session() as session, session.begin():
            session.add_all(
                UsageRow(
                    guild_id=GUILD,
                    discord_user_id=1000 + n % members,
                    feature=Feature.LORA.value,
                    action=Action.LORA_GENERATE.value,
                    cost=1,
                    shared_key=False,
                    created_at=now - timedelta(minutes=n % (60 * 24 * 30)),
                )
                for n in range(history)
            )

        admits: list[float] = []
        records: list[float] = []
        refused = 0
        prompt = "a watercolour fox in a misty pine forest at dawn, soft light, " * 3

        async def member(m: int) -> None:
            nonlocal refused
            for _ in range(requests // members):
                request = GateRequest(
                    user_id=1000 + m,
                    guild_id=GUILD,
                    channel_id=CHANNELS[m % len(CHANNELS)],
                    role_ids=frozenset({ROLES[m % len(ROLES)]}),
                    feature=Feature.LORA,
                    action=Action.LORA_GENERATE,
                    text=prompt,
                )
                t0 = time.perf_counter()
                try:
                    await gate.admit(request)
                except UserFacingError:
                    refused += 1
                    continue
                t1 = time.perf_counter()
                await gate.record(request)
                t2 = time.perf_counter()
                admits.append((t1 - t0) * 1000)
                records.append((t2 - t1) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(member(m) for m in range(members)))
        wall = time.perf_counter() - started
        await store.close()
    return {
        "requests": len(admits),
        "refused": refused,
        "members": members,
        "usage_rows_before": history,
        "admit_ms_p50": round(statistics.median(admits), 2),
        "admit_ms_p99": round(percentile(admits, 0.99), 2),
        "record_ms_p50": round(statistics.median(records), 2),
        "record_ms_p99": round(percentile(records, 0.99), 2),
        "requests_per_second": round(len(admits) / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--history", type=int, default=50_000)
    args = parser.parse_args()
    results = {
        # One member at a time: the gate's own cost per request.
        "one_member": asyncio.run(run(args.requests // 4, 1, args.history)),
        # Members asking at once: what a busy guild sees (SQLite serialises the writes).
        "concurrent": asyncio.run(run(args.requests, args.members, args.history)),
    }
    for name, result in results.items():
        print(name)
        for key, value in result.items():
            print(f"  {key:>22}: {value}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gate.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
