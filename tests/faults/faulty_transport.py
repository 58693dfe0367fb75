"""An httpx transport that puts faults between the bot and the real engine.

It wraps the engine's ``ASGITransport``: matching requests get, in order, the faults
scripted for them (a 5xx answer, a timeout before or after the engine saw the request,
a refused connection, or a long hold), then pass through. It counts what the bot sent
and what reached the engine, so tests can say "retried" or "never repeated".
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

import httpx


class Fault(StrEnum):
    """What happens to one matching request."""

    PASS = "pass"  # forwarded untouched
    UNAVAILABLE = "503"  # answered 503 by "a proxy"; the engine never sees it
    SERVER_ERROR = "500"  # answered 500; the engine never sees it
    TIMEOUT = "timeout"  # a read timeout before the engine saw it
    LOST_ANSWER = "lost"  # the engine did the work, then the answer timed out
    REFUSED = "refused"  # the connection was refused (nothing was sent)
    HOLD = "hold"  # parked for an hour before reaching the engine (a restart cuts it)
    HOLD_ANSWER = "hold-answer"  # the engine answered; the answer is parked for an hour
    EARLY_TIMEOUT = "early-timeout"  # timed out at once; the engine goes on with it after


@dataclass
class Rule:
    method: str
    path: re.Pattern[str]
    faults: list[Fault]

    def matches(self, request: httpx.Request) -> bool:
        return request.method == self.method and bool(self.path.fullmatch(request.url.path))


@dataclass
class FaultyTransport(httpx.AsyncBaseTransport):
    """Scripted faults in front of ``inner``; counts ``sent`` and ``reached`` per route."""

    inner: httpx.AsyncBaseTransport | None = None
    rules: list[Rule] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)
    reached: Counter[str] = field(default_factory=Counter)
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    def script(self, method: str, path: str, *faults: Fault) -> None:
        """Apply ``faults`` one per matching request (``path`` is a regex on the URL path)."""
        self.rules.append(Rule(method, re.compile(path), list(faults)))

    def _next_fault(self, request: httpx.Request) -> Fault:
        for rule in self.rules:
            if rule.matches(request) and rule.faults:
                return rule.faults.pop(0)
        return Fault.PASS

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert self.inner is not None, "FaultyTransport.inner is not set"
        route = f"{request.method} {request.url.path}"
        self.sent[route] += 1
        fault = self._next_fault(request)
        if fault in (Fault.UNAVAILABLE, Fault.SERVER_ERROR):
            return httpx.Response(int(fault.value), json={"detail": "injected by the test"})
        if fault is Fault.TIMEOUT:
            raise httpx.ReadTimeout("injected read timeout", request=request)
        if fault is Fault.REFUSED:
            raise httpx.ConnectError("injected: connection refused", request=request)
        if fault is Fault.HOLD:
            await asyncio.sleep(3600)
        self.reached[route] += 1
        if fault is Fault.EARLY_TIMEOUT:
            # The engine works on (the request reached it) while the client gives up.
            task = asyncio.get_running_loop().create_task(self._finish(request))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            raise httpx.ReadTimeout("injected: gave up while the engine works", request=request)
        response = await self.inner.handle_async_request(request)
        if fault is Fault.LOST_ANSWER:
            await response.aread()
            raise httpx.ReadTimeout("injected: the answer never arrived", request=request)
        if fault is Fault.HOLD_ANSWER:
            await response.aread()
            await asyncio.sleep(3600)
        return response

    async def _finish(self, request: httpx.Request) -> None:
        assert self.inner is not None
        await asyncio.sleep(0.5)  # the engine takes its time: done after the client gave up
        response = await self.inner.handle_async_request(request)
        await response.aread()

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()
