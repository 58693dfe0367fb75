"""The sandbox in-process: its simulated world, what it keeps between runs, channel switches,
and the page learning about messages the bot posts on its own. (The browser test drives
the same through Chromium.)"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import discord
import httpx
import pytest

from bot.app import EXTENSIONS, TadaBot
from bot.config import BotConfig
from bot.sandbox import (
    STATE_FILE,
    Sandbox,
    SandboxChannel,
    SandboxError,
    SandboxState,
    open_sandbox,
)
from engine.settings import EngineSettings
from tests.bot.conftest import make_bot_config
from tests.conftest import make_settings
from tests.waiting import CEILING_S, polls

pytestmark = pytest.mark.slow(40)

pytest.importorskip("aiohttp")
ROOT = Path(__file__).parents[2]


@pytest.fixture
def bot_config(tmp_path: Path) -> BotConfig:
    return make_bot_config(tmp_path / "data")


@pytest.fixture
def engine_settings(tmp_path: Path) -> EngineSettings:
    return make_settings(tmp_path / "data" / "engine", port=0)


def services_bot(sandbox: Sandbox) -> TadaBot:
    bot = sandbox.env.bot
    assert isinstance(bot, TadaBot)
    return bot


def services_of(sandbox: Sandbox) -> Any:
    bot = sandbox.env.bot
    assert isinstance(bot, TadaBot)
    return bot.services


async def test_the_world_is_a_guild_with_an_admin_at_the_keyboard_and_two_channels(
    bot_config: BotConfig, engine_settings: EngineSettings
) -> None:
    async with open_sandbox(bot_config, engine_settings=engine_settings) as sandbox:
        world = sandbox.world
        guild = sandbox.env.bot.get_guild(world.guild.id)
        assert guild is not None
        me = await guild.fetch_member(world.member.id)
        other = await guild.fetch_member(world.other.id)
        assert me.guild_permissions.administrator
        assert not other.guild_permissions.administrator
        assert {c.name for c in guild.text_channels} == {"general", "tadz-demo"}
        # No voice channel: the channel where members start says /voice say cannot work here.
        general = guild.get_channel(world.channels[SandboxChannel.GENERAL].id)
        assert isinstance(general, discord.TextChannel) and general.topic is not None
        assert "/voice say needs a voice channel" in general.topic
        # Discord's times are the wall clock's (the bot's jobs are stamped with it).
        assert abs((sandbox.env.now() - datetime.now(UTC)).total_seconds()) < 60
        settings = await services_of(sandbox).policy.settings(world.guild.id)
        assert settings.demo_channels == (world.channels[SandboxChannel.DEMO].id,)
        # Every slash command is there, /sandbox included, and runs for the member.
        help_ = await world.member.slash(world.channels[SandboxChannel.GENERAL], "tada help")
        assert help_.response is not None
        assert "/sandbox channel" in help_.response.content
        assert "/tada register" in help_.response.content


async def test_ids_and_access_token_are_the_same_on_the_next_run_whatever_cogs_load(
    bot_config: BotConfig, engine_settings: EngineSettings
) -> None:
    async with open_sandbox(bot_config, engine_settings=engine_settings) as first:
        ids, token, url = first.world.ids, first.access_token, first.address.url
        await services_of(first).policy.remove_demo_channel(
            ids.guild, ids.channels[SandboxChannel.DEMO.value]
        )
    saved = SandboxState.load(bot_config.data_dir / STATE_FILE)
    assert saved == SandboxState(ids=ids, access_token=token)
    assert (bot_config.data_dir / STATE_FILE).stat().st_mode & 0o077 == 0
    assert token in url

    # Fewer cogs mean fewer synced commands (each takes a snowflake); the world's ids hold.
    async with open_sandbox(
        bot_config, engine_settings=engine_settings, extensions=("cogs.account",)
    ) as second:
        assert second.world.ids == ids
        assert second.access_token == token
        # The admin's later choice is kept: the demo channel is not forced back.
        settings = await services_of(second).policy.settings(ids.guild)
        assert settings.demo_channels == ()


async def test_sandbox_channel_moves_the_page_keeping_its_address(
    bot_config: BotConfig, engine_settings: EngineSettings
) -> None:
    async with open_sandbox(bot_config, engine_settings=engine_settings) as sandbox:
        serving = asyncio.create_task(sandbox.serve_forever())
        try:
            before = sandbox.address
            general = sandbox.world.channels[SandboxChannel.GENERAL]
            asked = await sandbox.world.member.slash(
                general, "sandbox channel", channel="tadz-demo"
            )
            assert asked.ephemeral and asked.response is not None
            assert "reload the page" in asked.response.content
            for _ in polls():
                if sandbox.channel is SandboxChannel.DEMO:
                    break
                await asyncio.sleep(0.05)
            assert sandbox.channel is SandboxChannel.DEMO
            assert sandbox.address == before
            assert sandbox.preview is not None
            assert sandbox.preview.channel.id == sandbox.world.channels[SandboxChannel.DEMO].id
        finally:
            serving.cancel()


async def test_the_page_shows_what_the_bot_posts_on_its_own(
    bot_config: BotConfig, engine_settings: EngineSettings
) -> None:
    async with open_sandbox(bot_config, engine_settings=engine_settings) as sandbox:
        address = sandbox.address
        headers = {"X-Simcord-Capability": address.access_token}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{address.port}") as page:
            opened = (await page.post("/api/pages", json={}, headers=headers)).json()
            headers["X-Simcord-Context"] = opened["context"]["id"]
            revision = opened["publishedRevision"]

            await asyncio.sleep(3)  # a page open a while: its presentation time was then
            # Like a job result: the bot posts without any browser action asking.
            channel = sandbox.env.bot.get_channel(sandbox.world.channels[SandboxChannel.GENERAL].id)
            assert isinstance(channel, discord.TextChannel)
            await channel.send("Your training finished.")

            state = (await page.get("/api/state", headers=headers)).json()
            texts = [m.get("content") for m in state["messages"].values()]
            assert "Your training finished." in texts
            assert state["publishedRevision"] > revision
            # Relative times in the page read against now (the wall clock), not the time
            # the page was first published: "since 2 minutes", not "in 48 weeks".
            shown_at = datetime.fromisoformat(state["profile"]["presentationTime"])
            assert abs((shown_at - datetime.now(UTC)).total_seconds()) < 2.5
            # Nothing new: polling again does not republish.
            again = (await page.get("/api/state", headers=headers)).json()
            assert again["publishedRevision"] == state["publishedRevision"]


def test_no_sandbox_flag_says_how_to_get_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_TOKEN", "TADA_CONFIG")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "bot", "--no-sandbox"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=CEILING_S,
        check=False,
    )
    assert done.returncode == 2
    assert "discord.com/developers/applications" in done.stderr
    assert "sandbox" in done.stderr
    assert not (tmp_path / "data").exists()


async def test_a_port_in_use_is_a_clear_start_error(
    bot_config: BotConfig, engine_settings: EngineSettings
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SandboxError) as caught:
            async with open_sandbox(bot_config, engine_settings=engine_settings, port=port):
                pass
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "--sandbox-port" in str(caught.value)


def test_production_without_a_token_stops_instead_of_starting_a_sandbox(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_TOKEN", "TADA_CONFIG")}
    env.update(
        PYTHONPATH=str(ROOT),
        TADA_MODE="production",
        TADA_BOT_ENCRYPTION_KEY=Fernet.generate_key().decode(),
    )
    done = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=CEILING_S,
        check=False,
    )
    assert done.returncode == 2
    assert "DISCORD_TOKEN" in done.stderr
    assert "Open:" not in done.stdout


class PageClient:
    """One browser tab, at the preview's HTTP seam: opens a page and sends the actions the
    page's scripts send (protocol 3)."""

    def __init__(self, http: httpx.AsyncClient, token: str) -> None:
        self.http = http
        self.headers = {"X-Simcord-Capability": token}
        self.payload: dict[str, Any] = {}
        self.sequence = 0

    async def open(self, viewer_id: int | None = None) -> None:
        body = {} if viewer_id is None else {"viewer_id": str(viewer_id)}
        self.payload = (await self.http.post("/api/pages", json=body, headers=self.headers)).json()
        self.headers["X-Simcord-Context"] = self.payload["context"]["id"]

    async def state(self) -> dict[str, Any]:
        self.payload = (await self.http.get("/api/state", headers=self.headers)).json()
        return self.payload

    async def run(self, invocation: str, **options: str) -> dict[str, Any]:
        """Run a slash command as the page's Send does; the action's answer."""
        catalog = (await self.http.get("/api/commands", headers=self.headers)).json()
        await self.state()  # the revision the page has seen last
        [entry] = [e for e in catalog["entries"] if e["invocation"] == invocation]
        self.sequence += 1
        body = {
            "protocol_version": 3,
            "sequence": self.sequence,
            "request_id": f"r{self.sequence}-{id(self)}",
            "generation": self.payload["context"]["generation"],
            "bot_generation": self.payload["botGeneration"],
            "published_revision": self.payload["publishedRevision"],
            "kind": "run_command",
            "command_id": entry["commandId"],
            "path": entry["path"],
            "schema_fingerprint": entry["schemaFingerprint"],
            "options": options,
        }
        answer: dict[str, Any] = (
            await self.http.post("/api/action", json=body, headers=self.headers)
        ).json()
        return answer

    def texts(self) -> list[str]:
        return [str(m.get("content") or "") for m in self.payload["messages"].values()]


async def test_the_page_is_answered_at_once_while_the_bot_works_on(
    bot_config: BotConfig, engine_settings: EngineSettings
) -> None:
    # The freeze of issue 25: a browser action waited for all of the bot's work (a training,
    # a clone), so its tab showed "Completing action..." and other tabs were refused.
    from tests.sandbox.slow_cog import DONE

    extensions = (*EXTENSIONS, "tests.sandbox.slow_cog")
    async with open_sandbox(
        bot_config, engine_settings=engine_settings, extensions=extensions
    ) as sandbox:
        # discord.py imports an extension afresh: its class is not this module's SlowCog.
        slow: Any = services_bot(sandbox).get_cog("SlowCog")
        assert slow is not None
        address = sandbox.address
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{address.port}", timeout=200
        ) as http:
            first, second = (
                PageClient(http, address.access_token),
                PageClient(http, address.access_token),
            )
            await first.open()
            await second.open(sandbox.world.other.id)
            icon = await http.get("/favicon.ico")
            assert icon.status_code == 200 and icon.headers["content-type"] == "image/png"
            assert icon.content.startswith(b"\x89PNG")

            started = time.monotonic()
            answer = await asyncio.wait_for(first.run("slow"), 20)
            assert time.monotonic() - started < 10
            assert answer["settlement"] == "settled" and not answer["rejected"]
            assert slow.started.is_set() and not slow.release.is_set()  # still working

            # Another tab (another member) meanwhile: answered, not refused as busy.
            other = await asyncio.wait_for(second.run("tada help"), 20)
            assert other["settlement"] == "settled" and not other["rejected"], other
            await second.state()
            assert any("/tada register" in t for t in second.texts())

            # The work ends later; the first tab sees its result as it polls.
            slow.release.set()
            for _ in range(100):
                await first.state()
                if DONE in first.texts():
                    break
                await asyncio.sleep(0.1)
            assert DONE in first.texts()
