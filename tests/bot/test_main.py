"""The entry point and the embedded engine: real uvicorn on loopback, in the same loop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from bot.app import open_services
from bot.embedded import EmbeddedEngine, EngineStartError
from bot.tada import RetryPolicy, TadaClient, TadaTransportError
from tests.bot.conftest import make_bot_config
from tests.conftest import make_settings
from tests.waiting import CEILING_S, polls, wait_until

pytestmark = pytest.mark.slow(30)

ROOT = Path(__file__).parents[2]


def test_without_a_token_it_stops_at_once_saying_how_to_get_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_TOKEN", "TADA_CONFIG")}
    env["PYTHONPATH"] = str(ROOT)
    env["TADA_SANDBOX"] = "0"  # without it, no token starts the sandbox (tests/sandbox)
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
    assert "discord.com/developers/applications" in done.stderr
    assert not (tmp_path / "data").exists()  # nothing was started


async def test_embedded_engine_serves_on_loopback_and_stops(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "engine", port=0)
    engine = EmbeddedEngine(settings)
    base = await engine.start()
    assert base.startswith("http://127.0.0.1:")
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
    await engine.stop()
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(base + "/healthz")
    await engine.stop()  # stopping twice is harmless


async def test_open_services_in_embedded_mode_runs_the_whole_stack(tmp_path: Path) -> None:
    config = make_bot_config(tmp_path / "bot")
    settings = make_settings(tmp_path / "engine", port=0)
    async with open_services(config, engine_settings=settings) as services:
        assert services.engine is not None
        base = services.engine.base_url
        assert services.tada.base_url == base
        new = await services.accounts.register(7, "alice@example.com")
        assert (await services.accounts.client_for(7)).base_url == base
        masked = await services.accounts.link(8, new.api_key)
        assert masked.endswith(new.api_key.get_secret_value()[-4:])
    # Closed: the engine no longer listens.
    async with httpx.AsyncClient() as http:
        client = TadaClient(http, base_url=base, retry=RetryPolicy(max_retries=0))
        with pytest.raises(TadaTransportError):
            await client.with_key(SecretStr("k")).verify_key()


async def test_a_port_in_use_is_a_clear_start_error(tmp_path: Path) -> None:
    first = EmbeddedEngine(make_settings(tmp_path / "a", port=0))
    base = await first.start()
    port = int(base.rsplit(":", 1)[1])
    try:
        with pytest.raises(EngineStartError) as caught:
            await EmbeddedEngine(make_settings(tmp_path / "b", port=port)).start()
        assert "port" in str(caught.value)
    finally:
        await first.stop()


async def test_the_embedded_engine_is_a_child_process_that_stops_with_the_bot(
    tmp_path: Path,
) -> None:
    import asyncio

    import psutil

    from engine.settings import JobSettings
    from tests.engine.image.zips import good_zip

    settings = make_settings(
        tmp_path / "engine",
        port=0,
        embedded_child_process=True,
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image={"zip": {"min_side": 32}, "training": {"steps": 2, "rank": 4}},
    )
    engine = EmbeddedEngine(settings)
    base = await engine.start()
    try:
        children = [c for c in psutil.Process().children() if "serve" in c.cmdline()]
        assert len(children) == 1, [c.cmdline() for c in psutil.Process().children()]
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            key = (
                await http.post("/api/users/register", params={"email": "w@example.com"})
            ).json()["api_key"]
            h = {"X-API-Key": key}
            target = (
                await http.post(
                    "/api/loras/uploads/url",
                    params={"name": "s", "trigger_word": "tadz", "file_name": "s.zip"},
                    headers=h,
                )
            ).json()
            path = target["upload_url"].split(base, 1)[1]
            put = await http.put(path, content=good_zip(4, size=64), headers=target["headers"])
            assert put.status_code == 200, put.text
            started = await http.post(f"/api/loras/trainings/{target['id']}", headers=h)
            assert started.status_code == 202
            status, body = "", {}
            for _ in polls():
                body = (await http.get(f"/api/loras/trainings/{target['id']}", headers=h)).json()
                status = body["status"]
                if status in ("succeeded", "failed", "canceled"):
                    break
                await asyncio.sleep(0.25)
            assert status == "succeeded", body
    finally:
        await engine.stop()
    assert not children[0].is_running() or children[0].status() == psutil.STATUS_ZOMBIE


def test_the_embedded_engine_stops_when_the_bot_is_killed(tmp_path: Path) -> None:
    import signal

    import psutil

    script = tmp_path / "fake_bot.py"
    script.write_text(
        "import asyncio, sys\n"
        "from bot.embedded import EmbeddedEngine\n"
        "from tests.conftest import make_settings\n"
        "async def main():\n"
        f"    e = EmbeddedEngine(make_settings(__import__('pathlib').Path({str(tmp_path)!r}) / 'e',"
        " port=0, embedded_child_process=True))\n"
        "    await e.start()\n"
        "    print('up', flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bot = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert bot.stdout is not None and bot.stdout.readline().strip() == "up"
        (child,) = psutil.Process(bot.pid).children()
        bot.send_signal(signal.SIGKILL)
        bot.wait(10)
        wait_until(
            lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE,
            "the engine stops with the bot",
            every=0.2,
        )
    finally:
        bot.kill()
