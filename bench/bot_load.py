"""Benchmark: 200 members invoke ``/demo tadz`` at the same moment, in SimCord.

The real bot (composition root, job runner, cogs) runs in SimCord against the real engine
in-process (tiny image model on CPU, a demo LoRA trained on the spot). Measures:

- acknowledgement: from discord.py dispatching a member's interaction to the bot's
  ``defer`` being answered (our own code: gate, store, the callback HTTP call), and from
  the gateway event being emitted (which adds waiting behind the 199 others);
- delivery: from the engine finishing a generation (its row written) to the result
  posted in Discord (the bot's own row), which includes the engine's wait-poll, the
  artifact download and the post.

Prints p50/p99 and writes bench/results/bot_load.json.

    python bench/bot_load.py [--members 200] [--workers 2]

SimCord runs one operation at a time, so the 200 interactions are emitted on its
backend directly (``simcord.Backend`` is not public API) and settled once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Any

import httpx
import simcord
from PIL import Image
from pydantic import SecretStr
from sqlalchemy import create_engine, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.app import create_bot, open_services
from bot.config import BotConfig
from bot.jobs import JobState
from bot.store import LinkedVia
from bot.store.db import sync_url
from bot.store.models import JobRow
from engine.image.models import LoraGenerationRow
from engine.image.pipeline import ImageModel
from engine.image.settings import ImageSettings
from engine.image.types import TrainImage
from engine.settings import EngineSettings

RESULTS = Path(__file__).parent / "results"
BASE = "http://testserver"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1), nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    """p50, p99, max and mean in milliseconds."""
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 0.5), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def demo_lora(directory: Path) -> Path:
    """A demo LoRA trained on the tiny base model (as an operator would)."""
    model = ImageModel.from_settings(ImageSettings())
    examples = []
    for i in range(3):
        image = Image.new("RGB", (64, 64), (i * 70, 120, 200 - i * 50))
        buf = io.BytesIO()
        image.save(buf, "PNG")
        examples.append(TrainImage(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), "tadz"))
    path = directory / "tadz.safetensors"
    model.train_lora(examples, path, rank=4, steps=4, learning_rate=1e-2, seed=0)
    return path


def instrument_acks(calls: dict[int, float], acked: dict[int, float]) -> None:
    """Record when each interaction's deferral was sent and answered (bench-only wrapper)."""
    import discord

    original = discord.InteractionResponse.defer

    @wraps(original)
    async def defer(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[self._parent.id] = time.perf_counter()
        result = await original(self, *args, **kwargs)
        acked[self._parent.id] = time.perf_counter()
        return result

    discord.InteractionResponse.defer = defer  # type: ignore[method-assign]


def engine_values(root: Path, lora: Path, workers: int, port: int) -> dict[str, Any]:
    """The engine's settings for the bench: the tiny model, one demo, ``workers`` workers."""
    return {
        "data_dir": str(root / "engine"),
        "port": port,
        "jobs": {"in_process_workers": workers, "wait_timeout_seconds": 600},
        # The bot is the engine's one client (as the embedded engine exempts it itself).
        "limits": {"exempt_clients": ["127.0.0.1"]},
        "voice": {"preload": False},
        "image": {
            "generation": {"steps": 2},
            "demos": {"tadz": {"lora_path": str(lora), "trigger_word": "tadz"}},
        },
    }


def toml_of(values: dict[str, Any], prefix: str = "engine") -> str:
    """``values`` as TOML tables under ``[prefix]`` (strings, numbers, nested tables)."""
    scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in values.items() if isinstance(v, dict)}
    lines = [f"[{prefix}]"] + [f"{k} = {json.dumps(v)}" for k, v in scalars.items()]
    text = "\n".join(lines) + "\n"
    for key, table in tables.items():
        text += toml_of(table, f"{prefix}.{key}")
    return text


@contextlib.asynccontextmanager
async def engine_client(
    mode: str, values: dict[str, Any], root: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the engine: in this process (ASGI, like the embedded engine shares the
    bot's process) or a separate ``tada-engine serve`` process on loopback."""
    if mode == "embedded":
        # Today's embedded default: the API in this process, the job consumers in a child
        # ``tada-engine worker`` (bot/embedded.py), so models never hold the bot's loop.
        from bot.embedded import EmbeddedEngine

        settings = EngineSettings.model_validate(values)
        async with (
            EmbeddedEngine(settings) as embedded,
            httpx.AsyncClient(base_url=embedded.base_url, timeout=600) as client,
        ):
            yield client
        return
    if mode == "inprocess":
        # The former embedded design: API and job threads in the bot's process.
        from engine.app import create_app

        app = create_app(EngineSettings.model_validate(values))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=BASE, timeout=600) as client:
                yield client
        return
    config = root / "engine.toml"
    config.write_text(toml_of(values))
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine",
        "--config",
        str(config),
        "serve",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{values['port']}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=600) as client:
            for _ in range(600):
                try:
                    await client.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            yield client
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)


def engine_finish_times(values: dict[str, Any]) -> dict[str, datetime]:
    """When the engine wrote each generation (its row), read from its database."""
    url = sync_url(EngineSettings.model_validate(values).resolved_database_url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(LoraGenerationRow.id, LoraGenerationRow.created_at))
            return {row[0]: row[1] for row in rows}
    finally:
        engine.dispose()


async def run(members: int, workers: int, mode: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lora = await asyncio.to_thread(demo_lora, root)
        values = engine_values(root, lora, workers, free_port())
        async with engine_client(mode, values, root) as api:
            config = BotConfig.model_validate({"data_dir": root / "bot"})
            base = BASE if mode == "inprocess" else str(api.base_url)
            async with open_services(config, http=api, base_url=base) as svc:
                bot = create_bot(svc)
                result = await drive(bot, svc, api, members)
        made = engine_finish_times(values)
        return {"engine": mode, "engine_workers": workers, **summarize(result, made)}


async def drive(bot: Any, svc: Any, api: Any, members: int) -> dict[str, Any]:
    from simcord import interactions as _interactions
    from simcord.actors import _resolve_visible_command
    from simcord.enums import AppCommandType, InteractionType

    dispatched: dict[int, float] = {}
    calls: dict[int, float] = {}
    acked: dict[int, float] = {}
    instrument_acks(calls, acked)

    # When discord.py hands the parsed interaction to the command tree: our code starts.
    tree_cls = type(bot.tree)
    original = tree_cls._from_interaction

    def from_interaction(self: Any, interaction: Any) -> None:
        dispatched.setdefault(interaction.id, time.perf_counter())
        original(self, interaction)

    tree_cls._from_interaction = from_interaction
    async with simcord.run(bot, settle_timeout=600) as env:
        guild = env.create_guild()
        channel = guild.create_text_channel("demo")
        actors = []
        for i in range(members):
            actor = guild.add_member(env.create_user(f"member{i}"))
            resp = await api.post("/api/users/register", params={"email": f"member{i}@example.com"})
            await svc.members.save(actor.id, SecretStr(resp.json()["api_key"]), via=LinkedVia.LINK)
            actors.append(actor)

        root = _resolve_visible_command(actors[0], channel.id, "demo", AppCommandType.CHAT_INPUT)
        leaf, nesting = _interactions.walk_to_subcommand(root, ["tadz"])
        emitted: dict[int, float] = {}
        start = time.perf_counter()
        for i, actor in enumerate(actors):
            options, _ = _interactions.build_options(
                actor,
                "demo tadz",
                leaf,
                {"prompt": f"member {i} on a beach"},
                channel_id=channel.id,
            )
            data = {
                "id": root["id"],
                "name": root["name"],
                "type": AppCommandType.CHAT_INPUT,
                "options": _interactions.nest_options(root, nesting, options),
            }
            _record, payload = _interactions.base_payload(
                env.backend,
                type=InteractionType.APPLICATION_COMMAND,
                channel_id=channel.id,
                guild_id=guild.id,
                user_id=actor.id,
                data=data,
            )
            emitted[int(payload["id"])] = time.perf_counter()
            env.backend.emit("INTERACTION_CREATE", payload)
        await env.settle(timeout=600)
        wall = time.perf_counter() - start

        jobs = []
        for actor in actors:
            jobs.extend(await bot.jobs.store.for_member(actor.id))
        async with svc.store.session() as session:
            job_rows = {r.id: r for r in (await session.scalars(select(JobRow))).all()}
        return {
            "members": members,
            "wall": wall,
            "jobs": jobs,
            "rows": job_rows,
            "ack_own": [calls[i] - dispatched[i] for i in calls if i in dispatched],
            "ack_roundtrip": [acked[i] - dispatched[i] for i in acked if i in dispatched],
            "ack_wall": [acked[i] - emitted[i] for i in acked if i in emitted],
            "max_concurrent": bot.services.config.jobs.max_concurrent,
        }


def summarize(raw: dict[str, Any], made: dict[str, datetime]) -> dict[str, Any]:
    """Percentiles of the raw timings."""
    delivery: list[float] = []
    answered: list[float] = []
    ours: list[float] = []
    for job in raw["jobs"]:
        row = raw["rows"][job.id]
        if job.tada_id not in made or row.posted_at is None:
            continue
        engine_done = _utc(made[job.tada_id])
        posted = _utc(row.posted_at)
        delivery.append((posted - engine_done).total_seconds())
        if row.finished_at is not None:
            got = _utc(row.finished_at)
            answered.append((got - engine_done).total_seconds())
            ours.append((posted - got).total_seconds())
    jobs = raw["jobs"]
    return {
        "members": raw["members"],
        "finished": sum(1 for j in jobs if j.state is JobState.FINISHED),
        "posted": sum(1 for j in jobs if j.posted),
        "wall_seconds": round(raw["wall"], 2),
        "max_concurrent": raw["max_concurrent"],
        # Our code: from the command tree receiving the interaction to the bot sending its
        # deferral (task scheduling behind the other interactions included).
        "ack_own_code": summary(raw["ack_own"]),
        # ...to the deferral answered by (simulated) Discord, whose handling of the other
        # 199 requests runs in the same process and event loop.
        "ack_with_discord_roundtrip": summary(raw["ack_roundtrip"]),
        "ack_from_emit": summary(raw["ack_wall"]),
        "engine_done_to_posted": summary(delivery) if delivery else {},
        # The split: the engine answering the bot's call (its wait-poll, and in-process
        # the shared event loop and GIL), then the bot's own part (row, download, post).
        "engine_done_to_bot_answered": summary(answered) if answered else {},
        "bot_answered_to_posted": summary(ours) if ours else {},
    }


def _utc(moment: datetime) -> datetime:
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--engine", choices=("inprocess", "embedded", "process", "all"), default="all"
    )
    args = parser.parse_args()
    modes = ("inprocess", "embedded", "process") if args.engine == "all" else (args.engine,)
    results = [asyncio.run(run(args.members, args.workers, mode)) for mode in modes]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bot_load.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
