"""The engine process killed mid-training while the bot watches it: the member's progress
message in the channel shows what really happened.

The bot (SimCord) talks to a real ``tada-engine serve`` over loopback. A member uploads a
zip and trains it; the engine is SIGKILLed mid-training (no attempt left: max_attempts 1)
and started again. While it is down the bot keeps watching (its polls fail to connect);
once it is back the training reads ``failed`` with the restart as its reason, and the
progress message and the result posted to the member say so, once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import create_bot, open_services
from bot.config import TadaConfig
from bot.jobs import JobKind, JobState
from bot.store import LinkedVia
from tests.bot.conftest import make_bot_config
from tests.bot.media_samples import picture, zip_of
from tests.faults.engine_process import EngineProcess
from tests.faults.test_engine_restart import write_config
from tests.waiting import polls

pytestmark = pytest.mark.slow(30)

POLL = 60.0  # virtual seconds between the watcher's polls: each is one advance_time


async def engine_training(api: httpx.AsyncClient, key: str) -> dict[str, object]:
    page = (await api.get("/api/loras/trainings", headers={"X-API-Key": key})).json()
    assert page["total"] == 1, page
    training: dict[str, object] = page["trainings"][0]
    return training


@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_progress_message_shows_the_training_failed_by_the_restart(tmp_path: Path) -> None:
    engine = EngineProcess(write_config(tmp_path, max_attempts=1, steps=300), tmp_path / "log")
    await asyncio.to_thread(engine.start)
    try:
        config = make_bot_config(
            tmp_path / "bot", jobs={"poll_seconds": POLL, "post_backoff_seconds": 0.01}
        )
        config = config.model_copy(
            update={"tada": TadaConfig(base_url=engine.url, max_retries=1, backoff_base_seconds=0)}
        )
        async with (
            httpx.AsyncClient(base_url=engine.url, timeout=30) as api,
            open_services(config) as services,
            simcord.run(create_bot(services), settle_timeout=30) as env,
        ):
            guild = env.create_guild()
            channel = guild.create_text_channel("general")
            alice = guild.add_member(env.create_user("alice"))
            reg = await api.post("/api/users/register", params={"email": "alice@example.com"})
            key = reg.json()["api_key"]
            await services.members.save(alice.id, SecretStr(key), via=LinkedVia.LINK)

            zipped = zip_of({f"img{i}.jpg": picture(i) for i in range(4)})
            up = await alice.slash(
                channel, "lora upload", name="Cats", trigger_word="tadz", images=("s.zip", zipped)
            )
            await alice.click(up.followups[-1], label="Train")
            store = env.bot.jobs.store  # type: ignore[attr-defined]
            [job] = await store.for_member(alice.id)
            assert job.kind is JobKind.LORA_TRAIN and job.state is JobState.RUNNING

            # Let the engine get well into the training (real time), then let the bot see it.
            for _ in polls():
                training = await engine_training(api, key)
                if training["status"] == "processing" and int(str(training["progress"])) >= 5:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"never mid-training: {training}")
            await env.advance_time(POLL)
            job = await store.get(job.id)
            progress = next(m for m in channel.history() if m.id == job.progress_message_id)
            assert "Status: training" in progress.content, progress.content

            await asyncio.to_thread(engine.kill)
            await env.advance_time(POLL)  # a poll while the engine is down: keep watching
            job = await store.get(job.id)
            assert job.state is JobState.RUNNING and not job.posted

            await asyncio.to_thread(engine.start)
            for _ in range(20):
                await env.advance_time(POLL)
                job = await store.get(job.id)
                if job.posted:
                    break
            assert job.state is JobState.FAILED, job
            assert "interrupted by a restart" in (job.error or "")
            progress = next(m for m in channel.history() if m.id == job.progress_message_id)
            assert "❌ failed" in progress.content and "interrupted by a restart" in (
                progress.content
            ), progress.content
            results = [
                m
                for m in channel.history()
                if m.id != job.progress_message_id
                and alice.mention in m.content
                and "interrupted by a restart" in m.content
            ]
            assert len(results) == 1, [m.content for m in channel.history()]
            assert results[0].id == job.result_message_id
            _ = env.errors
    finally:
        await asyncio.to_thread(engine.stop)
