"""``POST /api/trace/speech``: was this clip made here? (engine extension, not upstream).

The body is the clip itself (any audio container the engine decodes; the container is
detected from its bytes). It streams to a temporary file under :data:`MAX_TRACE_BYTES`
(the request guard leaves ``/api/trace/`` bodies to this route, as it does uploads), is
decoded by the confined decoder and compared with the stored fingerprints
(:mod:`engine.voice.trace`): with ``X-API-Key``, among the caller's own generations; with
``X-Operator-Token``, among every generation of this engine. Either way the answer says
whether the clip carries the Ta-da watermark (machine-made by a Ta-da engine).
"""

from __future__ import annotations

import hmac
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request

from engine.api.deps import Services, Session, get_current_user
from engine.api.errors import invalid
from engine.voice.trace import MAX_TRACE_BYTES, TraceRefused, TraceResult, trace_clip

router = APIRouter(prefix="/api/trace", tags=["trace"])

_BODY: dict[str, Any] = {
    "x-tada-extension": True,
    "requestBody": {
        "required": True,
        "description": "The audio clip (wav, mp3, ogg/opus, m4a, flac, webm)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
}


def _is_operator(services: Services, token: str | None) -> bool:
    """Whether ``token`` is this engine's operator token (401 when one is sent and wrong)."""
    if token is None:
        return False
    expected = services.settings.trace.operator_token
    if expected is None or not hmac.compare_digest(
        token.encode(), expected.get_secret_value().encode()
    ):
        raise HTTPException(401, "invalid X-Operator-Token")
    return True


async def _save_body(request: Request, into: Path) -> int:
    size = 0
    with into.open("wb") as fh:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_TRACE_BYTES:
                raise HTTPException(
                    413, f"the clip is larger than {MAX_TRACE_BYTES // (1024 * 1024)} MB"
                )
            fh.write(chunk)
    return size


@router.post("/speech", response_model=TraceResult, openapi_extra=_BODY)
async def trace_speech(
    request: Request,
    services: Services,
    session: Session,
    x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None,
    x_operator_token: Annotated[
        str | None,
        Header(
            alias="X-Operator-Token",
            description="Engine extension: the operator's token searches every generation",
        ),
    ] = None,
) -> TraceResult:
    """Engine extension: whether the clip in the body is (part of) speech made here, and
    which generation (voice, when); the caller's own generations, or all for the operator.
    ``watermarked``: whether it carries the Ta-da watermark, whoever made it."""
    operator = _is_operator(services, x_operator_token)
    user_id = None if operator else (await get_current_user(session, x_api_key)).id
    with tempfile.TemporaryDirectory(prefix="tada-trace-") as tmp:
        path = Path(tmp) / "clip"
        if await _save_body(request, path) == 0:
            invalid("body", "audio", "send the audio clip as the request body")
        try:
            return await trace_clip(
                session, path, user_id=user_id, watermarker=services.voice.watermarker
            )
        except TraceRefused as exc:
            invalid("body", "audio", str(exc))
