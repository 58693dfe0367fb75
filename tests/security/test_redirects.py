"""The bot's Ta-da client never carries a member's key to another origin (issue 12.6)."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from bot.tada import TadaClient

pytestmark = pytest.mark.no_database

KEY = "tada_member_secret_key_1234567890"
API = "https://api.example/tadzagent"


class Recorder:
    """Two origins behind one transport: the API, which redirects, and a stranger."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.seen: list[tuple[str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((str(request.url), request.headers.get("X-API-Key")))
        if request.url.host == "api.example" and request.url.path.endswith("/api/voices"):
            return httpx.Response(302, headers={"Location": self.location})
        return httpx.Response(200, json=[])


async def test_a_redirect_to_another_origin_does_not_carry_the_key() -> None:
    server = Recorder("https://evil.example/collect")
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(server), follow_redirects=True
    ) as http:
        client = TadaClient(http, base_url=API, api_key=SecretStr(KEY))
        await client.list_voices()
    stranger = [key for url, key in server.seen if "evil.example" in url]
    assert stranger == [None], server.seen
    assert server.seen[0][1] == KEY  # the API itself got the key


async def test_a_redirect_to_another_scheme_or_port_does_not_carry_the_key() -> None:
    for location in ("http://api.example/tadzagent/api/voices/", "https://api.example:8443/x"):
        server = Recorder(location)
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(server), follow_redirects=True
        ) as http:
            client = TadaClient(http, base_url=API, api_key=SecretStr(KEY))
            await client.list_voices()
        assert [key for _, key in server.seen[1:]] == [None], server.seen


async def test_a_same_origin_redirect_keeps_working_with_the_key() -> None:
    server = Recorder(f"{API}/api/voices/")
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(server), follow_redirects=True
    ) as http:
        client = TadaClient(http, base_url=API, api_key=SecretStr(KEY))
        assert await client.list_voices() == []
    assert [key for _, key in server.seen] == [KEY, KEY]
