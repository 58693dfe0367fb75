"""SQLite under concurrent writers: no ``database is locked`` reaches a caller or a member.

A "hog" thread (standing in for a separate worker process) keeps taking the write lock of
the database file (``BEGIN IMMEDIATE`` held for 20 ms, over and over) while many requests
write at once: registrations, upload URLs, uploads, training starts on the engine; key
links through ``/tada link`` on the bot. Every one must succeed and every row be there.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import simcord
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import func, select, update

from bot.app import BotServices
from bot.store.models import LinkedVia
from engine.models import Job, Upload, User
from tests.conftest import make_settings, running_engine, services_of
from tests.engine.image.zips import good_zip

# Each interaction is settled when the bot's work on it is done; under load (a niced pass
# on a busy machine) that took over SimCord's default 5 s, so a ceiling, not a wait.
pytestmark = pytest.mark.simcord(settle_timeout=120)

CLIENTS = 40


@contextmanager
def hog(db_file: Path, hold: float = 0.02) -> Iterator[list[int]]:
    """Take the file's write lock again and again until the block ends; count the takes."""
    stop = threading.Event()
    taken = [0]

    def run() -> None:
        conn = sqlite3.connect(db_file, timeout=30, isolation_level=None)
        try:
            while not stop.is_set():
                conn.execute("BEGIN IMMEDIATE")
                taken[0] += 1
                time.sleep(hold)
                conn.execute("COMMIT")
                time.sleep(0.005)
        finally:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield taken
    finally:
        stop.set()
        thread.join(timeout=30)


async def one_member(api: httpx.AsyncClient, n: int) -> list[int]:
    """Register, get an upload URL, upload, start training; the status of each step."""
    statuses = []
    reg = await api.post("/api/users/register", params={"email": f"m{n}@example.com"})
    statuses.append(reg.status_code)
    key = {"X-API-Key": reg.json()["api_key"]}
    target = await api.post(
        "/api/loras/uploads/url",
        params={"name": f"set {n}", "trigger_word": "tadz", "file_name": "set.zip"},
        headers=key,
    )
    statuses.append(target.status_code)
    body = target.json()
    parts = urlsplit(body["upload_url"])
    put = await api.put(
        f"{parts.path}?{parts.query}", content=good_zip(4, size=32), headers=body["headers"]
    )
    statuses.append(put.status_code)
    started = await api.post(f"/api/loras/trainings/{body['id']}", headers=key)
    statuses.append(started.status_code)
    return statuses


async def test_engine_writes_wait_out_a_busy_database(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "engine", image={"zip": {"min_side": 32}})
    async with running_engine(settings) as (app, api):
        services = services_of(app)
        db_file = settings.data_dir / "engine.sqlite3"
        worker_writes = 0

        def worker_progress(stop: threading.Event) -> None:
            # The job worker's own writes (progress reports) through its sync engine.
            nonlocal worker_writes
            while not stop.is_set():
                with services.db.sync_session.begin() as s:
                    s.execute(update(Job).values(progress=Job.progress))
                worker_writes += 1

        stop = threading.Event()
        progress = threading.Thread(target=worker_progress, args=(stop,), daemon=True)
        with hog(db_file) as taken:
            progress.start()
            results = await asyncio.gather(*(one_member(api, n) for n in range(CLIENTS)))
            stop.set()
        progress.join(timeout=30)

        assert taken[0] > 0 and worker_writes > 0  # there really was contention
        failures = [r for r in results if r != [200, 200, 200, 202]]
        assert not failures, failures
        async with services.db.session() as s:
            assert await s.scalar(select(func.count()).select_from(User)) == CLIENTS
            assert await s.scalar(select(func.count()).select_from(Upload)) == CLIENTS
            assert await s.scalar(select(func.count()).select_from(Job)) == CLIENTS


async def test_bot_links_wait_out_a_busy_store(
    simcord_env: simcord.Env,
    services: BotServices,
    engine: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, api = engine
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    members = [guild.add_member(simcord_env.create_user(f"m{n}")) for n in range(12)]
    keys = []
    for n in range(len(members)):
        resp = await api.post("/api/users/register", params={"email": f"m{n}@example.com"})
        keys.append(resp.json()["api_key"])
    db_file = Path(services.store.url.split("///", 1)[-1])

    async def link(member: simcord.MemberActor, key: str) -> str:
        shown = await member.slash(channel, "tada link")
        result = await member.submit_modal(shown, {"api_key": key})
        assert result.response is not None
        return result.response.content

    async def other_writer(stop: asyncio.Event) -> int:
        # Another writer in the same process (SimCord runs one interaction at a time).
        writes = 0
        while not stop.is_set():
            await services.members.save(
                10_000 + writes % 50, SecretStr(f"tada_other{writes}"), via=LinkedVia.LINK
            )
            writes += 1
        return writes

    stop = asyncio.Event()
    with hog(db_file) as taken:
        writer = asyncio.ensure_future(other_writer(stop))
        replies = [await link(m, k) for m, k in zip(members, keys, strict=True)]
        stop.set()
        other_writes = await writer
    assert other_writes > 0
    assert taken[0] > 0
    assert all("Linked" in text for text in replies), replies
    for member, key in zip(members, keys, strict=True):
        account = await services.members.get(member.id)
        assert account is not None and account.api_key.get_secret_value() == key
    assert await services.members.count() == len(members) + min(other_writes, 50)
