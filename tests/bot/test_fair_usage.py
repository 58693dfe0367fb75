"""Quotas count what members got: failed requests are given back, and the counts survive
``/tada forget`` (issue 15, defects 2 and 3). The engine here has no demo model, so every
demo fails, as on a fresh engine."""

from __future__ import annotations

import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import BotServices
from bot.jobs import JobState
from bot.store import LinkedVia
from tests.bot.policy_world import Server, admin_says, make_server
from tests.bot.worker_world import bot_config, engine_settings  # noqa: F401
from tests.conftest import register

pytestmark = pytest.mark.simcord(settle_timeout=120)


@pytest.fixture
async def server(simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient) -> Server:
    built = make_server(simcord_env)
    key = await register(api, "alice@example.com")
    await services.members.save(built.alice.id, SecretStr(key), via=LinkedVia.LINK)
    return built


async def quota_text(server: Server) -> str:
    result = await server.alice.slash(server.general, "quota")
    assert result.response is not None
    return result.response.content


async def test_failed_requests_do_not_use_up_the_quota(
    simcord_env: simcord.Env, server: Server
) -> None:
    everyone = server.guild.default_role
    await admin_says(
        server, "quota set", role=everyone, feature="demo", limit="images_per_day", amount=1
    )
    await admin_says(
        server,
        "quota set",
        role=everyone,
        feature="voice",
        limit="voice_characters_per_day",
        amount=20,
    )
    for prompt in ("a cat", "a dog"):
        await server.alice.slash(server.general, "demo tadz", prompt=prompt)
    # Speech with a voice that does not exist fails too: its characters are given back.
    await server.alice.slash(server.general, "voice speak", voice="nope", text="x" * 15)
    await server.alice.slash(server.general, "voice speak", voice="nope", text="y" * 15)

    jobs = await simcord_env.bot.jobs.store.for_member(server.alice.id)  # type: ignore[attr-defined]
    # Both of each were admitted (the failures gave their allowance back) and failed.
    assert len(jobs) == 4 and all(j.state is JobState.FAILED for j in jobs)
    text = await quota_text(server)
    assert "1 of 1 image per day left" in text
    assert "20 of 20 voice characters per day left" in text
    usage = await admin_says(server, "usage", days=1)
    assert "2 demo images asked, 0 delivered" in usage, usage
    assert "30 characters asked, 0 delivered" in usage, usage
    _ = simcord_env.errors


async def test_a_cancelled_job_is_given_back(simcord_env: simcord.Env, server: Server) -> None:
    await admin_says(
        server,
        "quota set",
        role=server.guild.default_role,
        feature="demo",
        limit="images_per_day",
        amount=1,
    )
    runner = simcord_env.bot.jobs  # type: ignore[attr-defined]
    # Every slot is taken, so the demo waits in line and can be cancelled.
    runner.queue.max_running = 0
    await server.alice.slash(server.general, "demo tadz", prompt="a cat")
    [job] = await runner.store.for_member(server.alice.id)
    from bot.jobs.panel import JobPanel

    panel = JobPanel(runner, gate=simcord_env.bot.services.policy.gate)  # type: ignore[attr-defined]
    await panel.cancel(server.alice.id, job.id)
    assert "1 of 1" in await quota_text(server)
    usage = await admin_says(server, "usage", days=1)
    assert "1 demo image asked, 0 delivered" in usage, usage


async def test_a_job_forgotten_before_it_ran_gives_its_request_back(
    simcord_env: simcord.Env, server: Server, services: BotServices, api: httpx.AsyncClient
) -> None:
    await admin_says(
        server,
        "quota set",
        role=server.guild.default_role,
        feature="demo",
        limit="images_per_day",
        amount=1,
    )
    runner = simcord_env.bot.jobs  # type: ignore[attr-defined]
    runner.queue.max_running = 0
    await server.alice.slash(server.general, "demo tadz", prompt="a cat")
    asked = await server.alice.slash(server.general, "tada forget")
    assert asked.response is not None
    await server.alice.click(asked.response, label="Delete my data")
    # A slot frees up: the job is gone, so it never runs, and at the next sweep (of any
    # bot process) nothing counts.
    runner.queue.max_running = 1
    await runner.sweep()
    await simcord_env.settle()
    key = await register(api, "alice2@example.com")
    await services.members.save(server.alice.id, SecretStr(key), via=LinkedVia.LINK)
    assert "1 of 1 image per day left" in await quota_text(server)
