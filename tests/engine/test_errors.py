"""The domain's errors (engine/errors.py) answered in HTTP's shapes by engine/api/errors.py,
on the engine's real app: the same ``{"detail": ...}`` bodies routes gave with HTTPException."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from engine.api.errors import status_of
from engine.errors import (
    Conflict,
    EngineError,
    InvalidField,
    JobOutcomeError,
    NotFound,
    Rejected,
    StillRunning,
)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotFound("LoRA not found"), 404),
        (Rejected("nothing uploaded yet"), 400),
        (Conflict("upload is processed"), 409),
        (StillRunning("still drawing (job j1)", "j1"), 504),
        (JobOutcomeError("generation failed: boom"), 500),
        (EngineError("unmapped"), 500),
    ],
)
async def test_each_domain_error_has_its_status_and_detail(
    engine: tuple[FastAPI, httpx.AsyncClient], error: EngineError, status: int
) -> None:
    app, api = engine

    async def boom() -> None:
        raise error

    app.add_api_route("/_test/boom", boom)
    answer = await api.get("/_test/boom")
    assert answer.status_code == status == status_of(error)
    assert answer.json() == {"detail": error.detail}


async def test_an_invalid_field_reads_like_fastapis_own_validation_error(
    engine: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, api = engine

    async def boom() -> None:
        raise InvalidField("body", "prompt", "a variation keeps its parent's prompt", "x")

    app.add_api_route("/_test/invalid", boom)
    answer = await api.get("/_test/invalid")
    assert answer.status_code == 422
    assert answer.json() == {
        "detail": [
            {
                "loc": ["body", "prompt"],
                "msg": "a variation keeps its parent's prompt",
                "type": "value_error",
                "input": "x",
            }
        ]
    }
