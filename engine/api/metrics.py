"""The API's side of the metrics: an ASGI middleware that counts and times every request
by its route template (the registry and the metrics are :mod:`engine.metrics`')."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.metrics import EngineMetrics

# The route label of a request that matched no route (a 404): one series, not one per path.
UNMATCHED_ROUTE = "<unmatched>"


def route_template(scope: Scope, templates: Sequence[tuple[re.Pattern[str], str]] = ()) -> str:
    """The route a request matched, as its template (``/api/voices/{voice_id}``).

    A request answered before routing (a body too large, a rate limit) has no route yet:
    its path is matched against ``templates`` (see :func:`app_templates`)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    requested = str(scope.get("path", ""))
    for pattern, template in templates:
        if pattern.fullmatch(requested):
            return template
    return UNMATCHED_ROUTE


def app_templates(app: Any) -> list[tuple[re.Pattern[str], str]]:
    """Every route template of a FastAPI app (its OpenAPI paths and its plain routes) with
    the pattern its paths match, fixed paths before parameterised ones."""
    found: set[str] = set(app.openapi().get("paths", {}))
    found |= {path for route in app.routes if isinstance(path := getattr(route, "path", None), str)}
    ordered = sorted(found, key=lambda template: (template.count("{"), template))
    return [(compile_path(template)[0], template) for template in ordered]


class RequestMetrics:
    """ASGI middleware: count every HTTP request by route template and status, and time it
    to the end of its response. Outermost, so refusals of the other middleware count too."""

    def __init__(self, app: ASGIApp, *, metrics: EngineMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # Built on the first request answered before routing (the app is complete then).
        self._templates: list[tuple[re.Pattern[str], str]] | None = None

    def _route(self, scope: Scope) -> str:
        if scope.get("route") is None and self._templates is None and "app" in scope:
            self._templates = app_templates(scope["app"])
        return route_template(scope, self._templates or ())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = self._route(scope)
            method = str(scope.get("method", "GET"))
            self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.request_seconds.labels(method=method, route=route).observe(
                time.perf_counter() - started
            )
