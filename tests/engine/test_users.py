"""Registration and API-key authentication."""

from __future__ import annotations

import httpx
import sqlalchemy
from fastapi import FastAPI

from engine.security import hash_api_key
from tests.conftest import database_dump, register, services_of


async def test_register_returns_a_prefixed_key_once_and_stores_only_its_hash(
    engine: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, api = engine
    resp = await api.post("/api/users/register", params={"email": "  Alice@Example.COM "})
    assert resp.status_code == 200
    body = resp.json()
    assert body["email"] == "alice@example.com"
    key = body["api_key"]
    assert key.startswith("tada_") and len(key) >= 40
    dump = database_dump(app)
    assert "alice@example.com" in dump  # the dump really holds the users table
    assert key not in dump
    assert key[5:] not in dump


async def test_an_email_already_registered_gets_409_and_no_second_key(
    api: httpx.AsyncClient,
) -> None:
    await register(api, "carol@example.com")
    resp = await api.post("/api/users/register", params={"email": "CAROL@example.com"})
    assert resp.status_code == 409
    assert "already registered" in resp.json()["detail"]
    assert "api_key" not in resp.text


async def test_invalid_emails_get_fastapi_shaped_422(api: httpx.AsyncClient) -> None:
    for bad in ["not-an-email", "a@b", "x@@example.com", "a b@example.com"]:
        resp = await api.post("/api/users/register", params={"email": bad})
        assert resp.status_code == 422, bad
        detail = resp.json()["detail"]
        assert detail[0]["loc"] == ["query", "email"]
    missing = await api.post("/api/users/register")
    assert missing.status_code == 422


async def test_keys_are_unique_per_user(api: httpx.AsyncClient) -> None:
    keys = {await register(api, f"user{i}@example.com") for i in range(5)}
    assert len(keys) == 5


async def test_missing_or_unknown_key_is_401_with_detail(api: httpx.AsyncClient) -> None:
    resp = await api.get("/api/voices/uploads")
    assert resp.status_code == 401
    assert "X-API-Key" in resp.json()["detail"]
    resp = await api.get("/api/voices/uploads", headers={"X-API-Key": "tada_nope"})
    assert resp.status_code == 401
    assert resp.json()["detail"] == "invalid API key"


async def test_a_deleted_account_or_replaced_key_fails_on_its_very_next_request(
    engine: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    """The key is checked against the database on every request: nothing in the API
    process's memory (no key cache, no reused statement result) keeps it alive after
    another process (an admin's SQL, another API replica) deletes or replaces it."""
    app, api = engine
    db = services_of(app).db
    gone = await register(api, "gone@example.com")
    moved = await register(api, "moved@example.com")
    for key in (gone, moved):
        assert (await api.get("/api/voices", headers={"X-API-Key": key})).status_code == 200
    with db.sync_engine.begin() as conn:
        conn.execute(sqlalchemy.text("DELETE FROM users WHERE email = 'gone@example.com'"))
        conn.execute(
            sqlalchemy.text("UPDATE users SET key_hash = :h WHERE email = 'moved@example.com'"),
            {"h": hash_api_key("tada_new")},
        )
    for key in (gone, moved):
        resp = await api.get("/api/voices/uploads", headers={"X-API-Key": key})
        assert resp.status_code == 401, key
    resp = await api.get("/api/voices", headers={"X-API-Key": "tada_new"})
    assert resp.status_code == 200
