"""The bot's Prometheus metrics, as SimCord members move them: interactions by command,
refusals by reason, and the wait until a result is posted, read from the bot's own
endpoint (``[metrics] port``) over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import simcord
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from bot.app import BotServices
from bot.config import BotConfig
from bot.store import LinkedVia
from engine.settings import EngineSettings
from tests.bot.conftest import make_bot_config
from tests.bot.policy_world import (
    Server,
    admin_says,
    demo_engine_settings,
    demo_loras,
    make_server,
    take_refusals,
)
from tests.conftest import register

__all__ = ["demo_loras"]  # the module-scoped fixture, used through engine_settings

pytestmark = pytest.mark.simcord(settle_timeout=120)


@pytest.fixture
def engine_settings(tmp_path: Path, demo_loras: dict[str, Path]) -> EngineSettings:
    return demo_engine_settings(tmp_path / "engine", demo_loras)


@pytest.fixture
def bot_config(tmp_path: Path) -> BotConfig:
    # Port 0: any free port, on loopback (the default host).
    return make_bot_config(tmp_path / "bot", metrics={"port": 0})


@pytest.fixture
async def server(simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient) -> Server:
    built = make_server(simcord_env)
    key = await register(api, "alice@example.com")
    await services.members.save(built.alice.id, SecretStr(key), via=LinkedVia.LINK)
    return built


async def scrape(services: BotServices) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    url = services.metrics.url
    assert url is not None and url.startswith("http://127.0.0.1:")
    async with httpx.AsyncClient() as client:
        resp = await client.get(url)
    assert resp.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(resp.text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_interactions_refusals_and_deliveries_are_counted(
    simcord_env: simcord.Env, server: Server, services: BotServices
) -> None:
    before = await scrape(services)
    assert value(before, "tada_bot_interactions_total", type="command", command="quota") == 0

    await server.alice.slash(server.general, "quota")
    await admin_says(
        server,
        "quota set",
        role=server.guild.default_role,
        feature="demo",
        limit="images_per_day",
        amount=1,
    )
    posted = await server.alice.slash(server.general, "demo tadz", prompt="a cat")
    assert posted.followups[-1].attachments
    await server.alice.slash(server.general, "demo tadz", prompt="a dog")
    (refusal,) = take_refusals(simcord_env)
    assert "allowance" in refusal

    after = await scrape(services)
    assert value(after, "tada_bot_interactions_total", type="command", command="quota") == 1
    assert value(after, "tada_bot_interactions_total", type="command", command="demo tadz") == 2
    assert (
        value(after, "tada_bot_interactions_total", type="command", command="tada-admin quota set")
        == 1
    )
    assert value(after, "tada_bot_refusals_total", reason="quota") == 1
    assert value(after, "tada_bot_errors_total", reason="internal") == 0
    delivered = {"kind": "demo_generate", "destination": "interaction"}
    assert value(after, "tada_bot_delivery_seconds_count", **delivered) == 1
    assert value(after, "tada_bot_delivery_seconds_sum", **delivered) > 0
    assert value(after, "tada_bot_post_seconds_count", destination="interaction") == 1
