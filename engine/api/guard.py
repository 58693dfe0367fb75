"""The engine's front door: request bodies bounded before they are read, stalled bodies
closed, text and numbers checked once, and per-client and global rates limited.

One pure ASGI middleware, so that nothing past it (routing, authentication, FastAPI's body
parsing, a database, a model) ever sees an oversized or malformed request:

- a JSON body is UTF-8 (RFC 8259), read strictly: Python's JSON reader also takes UTF-16
  and UTF-32 bodies and CESU-8 surrogates, which would carry lone surrogates past any
  check of ``\\u`` escapes; its strings hold no lone surrogate, and its numbers are
  finite (``NaN``, ``Infinity`` and ``1e309`` parse to floats that no JSON answer can
  carry back);
- the path and the query string hold no NUL (PostgreSQL's text cannot store one, so an id
  with one would fail in the database instead of being a refusal).

Uploads through pre-signed URLs keep their own per-upload cap (the route checks it); their
bodies are bytes, not text, and only get the stall timeout.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any
from urllib.parse import parse_qsl

import anyio
import redis.asyncio
from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.settings import LimitSettings

# Escapes that may encode half of a surrogate pair; only these bodies get the full check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_UPLOAD_PREFIX = "/storage/uploads/"
# Bodies that are not JSON and stream to disk under their own caps: uploads, and clips
# to trace (engine/api/trace.py), which the JSON body cap would refuse.
_STREAMED_PREFIXES = (_UPLOAD_PREFIX, "/api/trace/")
_REGISTER = "/api/users/register"


class BodyStalled(Exception):
    """The client stopped sending its body."""


class _NonFinite(Exception):
    """A JSON number that is not a finite float (raised while parsing, not a ValueError)."""


# (location, message) of an error in FastAPI's 422 shape.
Problem = tuple[list[str | int], str]
NOT_UTF8 = "the request body must be JSON encoded as UTF-8 (RFC 8259)"
NON_FINITE = "numbers must be finite: no NaN, Infinity or values past about 1.8e308"
NUL_TEXT = "must not contain NUL characters"


def _refuse_constant(name: str) -> float:
    raise _NonFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


def json_body_problem(body: bytes) -> tuple[int, Problem] | None:
    """Why a request body cannot be let through (status, (location, message)), or None.

    A body that is not JSON at all is let through: FastAPI answers it as it would.
    """
    if not body:
        return None
    if json.detect_encoding(body) not in ("utf-8", "utf-8-sig"):
        return 400, (["body"], NOT_UTF8)
    try:
        text = body.decode("utf-8-sig")  # strict: surrogates (CESU-8) are not UTF-8
    except UnicodeDecodeError as exc:
        return 400, (["body"], f"{NOT_UTF8}: byte {exc.start} is not")
    try:
        decoded = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NonFinite:
        return 422, (["body"], NON_FINITE)
    except (ValueError, RecursionError):
        return None  # not JSON (or too deep for Python's reader): FastAPI's own answer
    if _SURROGATE_ESCAPE.search(body):
        where = lone_surrogate_path(decoded)
        if where is not None:
            return 422, (["body", *where], "text must be valid Unicode: it holds a lone surrogate")
    return None


def path_or_query_problem(scope: Scope) -> Problem | None:
    """A NUL in the path or in a query value (where FastAPI would report it), or None."""
    if "\x00" in scope["path"]:
        return ["path"], f"the path {NUL_TEXT}"
    query: bytes = scope.get("query_string", b"")
    if b"\x00" in query or b"%00" in query:
        text = query.decode("latin-1")
        for name, value in parse_qsl(text, keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                return ["query", name.replace("\x00", "")], NUL_TEXT
    return None


def lone_surrogate_path(
    value: Any, path: tuple[str | int, ...] = ()
) -> tuple[str | int, ...] | None:
    """Where in decoded JSON a string holds a lone surrogate (cannot be UTF-8), or None."""
    if isinstance(value, str):
        return path if any(0xD800 <= ord(c) <= 0xDFFF for c in value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = lone_surrogate_path(key, path) or lone_surrogate_path(item, (*path, key))
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = lone_surrogate_path(item, (*path, index))
            if found is not None:
                return found
    return None


class RateLimits:
    """Moving-window limits from :class:`LimitSettings`, in the configured storage."""

    def __init__(self, settings: LimitSettings) -> None:
        uri = settings.storage_uri
        uri = uri if uri.startswith("async+") else f"async+{uri}"
        # limits talks to Redis through coredis unless told otherwise; redis-py is the
        # client the engine already has (huey's Redis queue uses it). A plain redis:// or
        # rediss:// URL gets a connection pool of ours, so that close() can release it.
        options: dict[str, Any] = {}
        self._pool: redis.asyncio.ConnectionPool | None = None
        scheme = uri.split("://", 1)[0]
        if scheme.startswith("async+redis"):
            options["implementation"] = "redispy"
        if scheme in ("async+redis", "async+rediss"):
            self._pool = redis.asyncio.ConnectionPool.from_url(uri.removeprefix("async+"))
            options["connection_pool"] = self._pool
        self.limiter = MovingWindowRateLimiter(storage_from_string(uri, **options))
        self.register_client = _items(settings.register_per_client)
        self.register_global = _items(settings.register_global)
        self.per_client = _items(settings.requests_per_client)
        self.exempt = frozenset(settings.exempt_clients)

    async def close(self) -> None:
        """Release the connections to a shared store (nothing to do in memory)."""
        if self._pool is not None:
            await self._pool.aclose()

    async def retry_after(self, method: str, path: str, client: str) -> int | None:
        """Seconds until this request would be allowed, or None when it is allowed now."""
        if client in self.exempt:
            return None
        checks: list[tuple[RateLimitItem, str]] = []
        if path.startswith("/api/"):
            checks += [(item, f"client:{client}") for item in self.per_client]
        if method == "POST" and path == _REGISTER:
            checks += [(item, f"register:{client}") for item in self.register_client]
            checks += [(item, "register:all") for item in self.register_global]
        for item, key in checks:
            if not await self.limiter.hit(item, key):
                stats = await self.limiter.get_window_stats(item, key)
                return max(1, math.ceil(stats.reset_time - _now()))
        return None


def _items(spec: str) -> list[RateLimitItem]:
    return parse_many(spec) if spec.strip() else []


def _now() -> float:
    return time.time()


class RequestGuard:
    """ASGI middleware; see the module docstring."""

    def __init__(
        self, app: ASGIApp, *, settings: LimitSettings, rates: RateLimits | None = None
    ) -> None:
        self.app = app
        self.settings = settings
        # The app passes its own, to close it when it stops (a Redis pool).
        self.rates = rates if rates is not None else RateLimits(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        client = scope.get("client") or ("unknown", 0)
        wait = await self.rates.retry_after(scope["method"], path, str(client[0]))
        if wait is not None:
            await _answer(
                send, 429, "too many requests; try again later", {"retry-after": str(wait)}
            )
            return
        nul = path_or_query_problem(scope)
        if nul is not None:
            await _answer_invalid(send, *nul)
            return
        stall = self.settings.body_stall_seconds
        started = False
        body_done = False

        async def stalled_receive() -> Message:
            # Only while the body is incomplete: afterwards receive() waits for a
            # disconnect, which may rightly take as long as the response does.
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                with anyio.fail_after(stall):
                    message = await receive()
            except TimeoutError as exc:
                raise BodyStalled from exc
            body_done = message["type"] != "http.request" or not message.get("more_body")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            if path.startswith(_STREAMED_PREFIXES):
                await self.app(scope, stalled_receive, guarded_send)
                return
            if not _has_body(scope):
                # Most reads (GET) carry no body: nothing to bound or replay.
                await self.app(scope, receive, send)
                return
            body = await self._read_body(scope, stalled_receive, send)
            if body is None:
                return
            await self.app(scope, _replay(body, receive), guarded_send)
        except BodyStalled:
            if not started:
                await _answer(send, 408, f"the request body stalled for {stall:g} s; send it again")

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None after answering 413 / 422 (nothing more is read)."""
        cap = self.settings.max_json_body_bytes
        too_large = f"request body is larger than {cap} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > cap):
                await _answer(send, 413, too_large)
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                await _answer(send, 413, too_large, close=True)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = json_body_problem(body)
        if problem is not None:
            status, (loc, why) = problem
            if status == 422:
                await _answer_invalid(send, loc, why)
            else:
                await _answer(send, status, why)
            return None
        return body


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(
    send: Send,
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
    *,
    close: bool = False,
) -> None:
    await _send_json(send, status, {"detail": detail}, headers, close=close)


async def _answer_invalid(send: Send, loc: list[str | int], message: str) -> None:
    error = {"loc": loc, "msg": message, "type": "value_error"}
    await _send_json(send, 422, {"detail": [error]})


async def _send_json(
    send: Send,
    status: int,
    content: dict[str, Any],
    headers: dict[str, str] | None = None,
    *,
    close: bool = False,
) -> None:
    body = json.dumps(content).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:  # the rest of the body is not read: the connection cannot be reused
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
