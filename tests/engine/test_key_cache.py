"""The API key cache: a known key skips the user SELECT; wrong keys always read the row."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy import event

from engine.security import KeyCache
from tests.conftest import register, services_of


def test_entries_expire_and_the_cache_is_bounded() -> None:
    cache = KeyCache(ttl=0.0, size=2)
    cache.put("a", "1")
    assert cache.get("a") is None  # expired at once
    cache = KeyCache(ttl=60, size=2)
    for key in "abc":
        cache.put(key, key.upper())
    assert cache.get("a") is None and cache.get("b") == "B" and cache.get("c") == "C"


async def test_a_known_key_skips_the_user_select(
    engine: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, api = engine
    key = await register(api)
    statements: list[str] = []
    sync_engine = services_of(app).db.async_engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for _ in range(3):
        assert (await api.get("/api/voices", headers={"X-API-Key": key})).status_code == 200
    user_reads = [s for s in statements if "FROM users" in s]
    assert len(user_reads) <= 1, user_reads
    for _ in range(2):
        assert (
            await api.get("/api/voices", headers={"X-API-Key": "tada_wrong"})
        ).status_code == 401
    assert len([s for s in statements if "FROM users" in s]) == len(user_reads) + 2
