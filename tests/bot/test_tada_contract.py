"""The client covers every endpoint of every published contract revision.

The contract facts come from ``tests/fixtures/tada_contract.json`` (derived from
``shared/reference`` by ``scripts/derive_tada_contract.py``). A ``MockTransport`` server
answers only the paths one revision defines, so the client's calls are checked against
that revision's method, path, query parameters and JSON body, and the fallback from the
latest paths to the seed's is exercised against a seed-only server.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bot.tada import NotFound, TadaClient

CONTRACT = json.loads((Path(__file__).parents[1] / "fixtures" / "tada_contract.json").read_text())
REVISIONS: dict[str, list[dict[str, Any]]] = CONTRACT["revisions"]
SEED, LATEST = "67ae74b", "a67496a"
NOW = "2026-01-01T00:00:00Z"

# One call per client method, with the answer a server of the contract would give.
VOICE = {"id": "v1", "name": "me", "created_at": NOW}
VGEN = {
    "id": "g1",
    "voice_id": "v1",
    "text": "hi",
    "audio_url": "http://x/a.mp3",
    "created_at": NOW,
}
VLIST = {"generations": [VGEN], "total": 1, "limit": 5, "offset": 10}
UPLOAD_URL = {"upload_id": "u1", "upload_url": "http://x/put", "headers": {}}
TRAINING = {
    "id": "t1",
    "upload_id": "u1",
    "status": "starting",
    "created_at": NOW,
    "updated_at": NOW,
}
IMAGE = {"id": "i1", "image_url": "http://x/i.png", "prompt": "p", "enhanced_prompt": "p!"}
CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], Any]] = [
    ("register", ("a@example.com",), {}, {"api_key": "tada_k", "email": "a@example.com"}),
    ("verify_key", (), {}, []),
    ("create_voice_upload_url", ("me", "s.wav"), {}, UPLOAD_URL),
    ("create_voice", ("u1",), {}, VOICE),
    ("list_voice_uploads", (), {}, [{**VOICE, "status": "uploaded"}]),
    ("list_voices", (), {}, [VOICE]),
    ("get_voice", ("v1",), {}, VOICE),
    ("generate_voice", ("v1", "hi"), {}, {"url": "http://x/a.mp3"}),
    ("list_voice_generations", ("v1",), {"limit": 5, "offset": 10}, VLIST),
    ("list_all_voice_generations", (), {"limit": 5, "offset": 10}, VLIST),
    ("get_voice_generation", ("g1",), {}, VGEN),
    ("create_lora_upload_url", ("style", "tadz", "i.zip"), {}, UPLOAD_URL),
    ("list_lora_uploads", (), {}, [{**VOICE, "trigger_word": "tadz"}]),
    ("start_lora_training", ("u1",), {}, TRAINING),
    ("get_lora_training", ("u1",), {}, TRAINING),
    ("list_lora_trainings", (), {"limit": 5, "offset": 10}, [TRAINING]),
    ("generate_lora", ("u1", "a cat"), {}, IMAGE),
    ("list_lora_generations", ("u1",), {"limit": 5, "offset": 10}, [IMAGE]),
    ("list_all_lora_generations", (), {"limit": 5, "offset": 10}, [IMAGE]),
    ("get_lora_generation", ("i1",), {}, IMAGE),
    ("demo_tadz", ("a cat",), {}, IMAGE),
    ("demo_pudgy", ("a cat",), {}, IMAGE),
]


def _pattern(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")


class ContractServer:
    """Answers exactly the operations of one revision; anything else is 404."""

    def __init__(self, revision: str, answer: Any) -> None:
        self.ops = REVISIONS[revision]
        self.answer = answer
        self.hits: list[tuple[str, str]] = []
        self.problems: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        matches = [
            op
            for op in self.ops
            if op["method"] == request.method and _pattern(op["path"]).match(path)
        ]
        if not matches:
            return httpx.Response(404, json={"detail": "Not Found"})
        # A literal segment wins over a placeholder (/api/voices/generations is not a voice id).
        fewest = min(op["path"].count("{") for op in matches)
        matches = [op for op in matches if op["path"].count("{") == fewest]
        op = matches[0]
        query = dict(request.url.params)
        for name, required in op["query_params"].items():
            if required and name not in query:
                self.problems.append(f"{op['path']}: missing query {name}")
        for name in query:
            if name not in op["query_params"]:
                self.problems.append(f"{op['path']}: unknown query {name}")
        body = json.loads(request.content) if request.content else None
        if op["json_body"] is None:
            if body is not None:
                self.problems.append(f"{op['path']}: sent a body the contract does not take")
        elif body is None or sorted(body) != op["json_body"]:
            self.problems.append(f"{op['path']}: body {body} != {op['json_body']}")
        self.hits.extend((o["method"], o["path"]) for o in matches)
        return httpx.Response(op["success_status"], json=self.answer)


async def _run(revision: str) -> tuple[set[tuple[str, str]], list[str], list[str]]:
    """Call every client method against a server of ``revision``."""
    hits: set[tuple[str, str]] = set()
    problems: list[str] = []
    missing: list[str] = []
    for name, args, kwargs, answer in CALLS:
        server = ContractServer(revision, answer)
        async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
            client = TadaClient(http, base_url="http://tada.test").with_key(SecretStr("tada_k"))
            try:
                await getattr(client, name)(*args, **kwargs)
            except NotFound:
                missing.append(name)
        hits.update(server.hits)
        problems.extend(server.problems)
    return hits, problems, missing


@pytest.mark.parametrize("revision", sorted(REVISIONS))
async def test_every_call_matches_the_revision_it_reaches(revision: str) -> None:
    hits, problems, missing = await _run(revision)
    assert problems == []
    # Only the latest revision's new reads have no seed equivalent.
    if revision == LATEST:
        assert missing == []
    else:
        assert sorted(missing) == ["get_lora_generation", "list_lora_generations"]
    assert hits  # the revision was actually exercised


async def test_every_operation_of_every_revision_is_covered() -> None:
    covered: set[tuple[str, str]] = set()
    for revision in REVISIONS:
        hits, _, _ = await _run(revision)
        covered |= hits
    every = {(op["method"], op["path"]) for ops in REVISIONS.values() for op in ops}
    assert every - covered == set()


async def test_moved_paths_fall_back_to_the_seed_and_remember_it() -> None:
    server = ContractServer(SEED, {"url": "http://x/a.mp3"})
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return server(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = TadaClient(http, base_url="http://tada.test").with_key(SecretStr("tada_k"))
        spoken = await client.generate_voice("v1", "hello")
        assert spoken.url == "http://x/a.mp3"
        await client.generate_voice("v1", "again")
    assert seen == [
        "POST /api/voices/v1/generations",
        "POST /api/voices/generations/v1",
        "POST /api/voices/generations/v1",  # learned: straight to the seed path
    ]


async def test_a_405_also_falls_back() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/api/loras/u1/generations":
            return httpx.Response(405, json={"detail": "Method Not Allowed"})
        return httpx.Response(200, json=IMAGE)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        image = await TadaClient(http, base_url="http://tada.test").generate_lora("u1", "p")
    assert image.image_url == "http://x/i.png"
    assert seen == ["/api/loras/u1/generations", "/api/loras/generations/u1"]


async def test_the_latest_path_is_used_when_the_server_has_it() -> None:
    server = ContractServer(LATEST, VLIST)
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
        page = await TadaClient(http, base_url="http://tada.test").list_voice_generations("v1")
    assert server.hits == [("GET", "/api/voices/{voice_id}/generations")]
    assert page.total == 1 and page.generations[0].audio_url == "http://x/a.mp3"
