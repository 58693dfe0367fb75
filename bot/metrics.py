"""Prometheus metrics of the bot: interactions by command, refusals by reason, and how long
members wait for their results.

One :class:`BotMetrics` per bot process, built in the composition root
(:func:`bot.app.open_services`) on a :class:`~prometheus_client.CollectorRegistry` of its
own, and served (``[metrics] port``, off by default) on ``[metrics] host``, 127.0.0.1 by
default: a local Prometheus (or an SSH tunnel, or a proxy the operator secures) scrapes it.
Several bot processes (shards) each serve their own port; each is one target.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from wsgiref.simple_server import WSGIServer

import discord
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

# Seconds from a member's request to its result posted: speech in seconds, trainings hours.
DELIVERY_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
# Seconds Discord took to take one post (retries included).
POST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def interaction_labels(interaction: discord.Interaction) -> tuple[str, str]:
    """``(type, command)`` of an interaction: the slash command's full name (``voice say``)
    for commands and their autocomplete, ``-`` for buttons and modals (their custom ids
    carry job ids, which would make a series per job)."""
    kind = interaction.type
    if kind is discord.InteractionType.application_command:
        return "command", _command_name(interaction)
    if kind is discord.InteractionType.autocomplete:
        return "autocomplete", _command_name(interaction)
    if kind is discord.InteractionType.component:
        return "component", "-"
    if kind is discord.InteractionType.modal_submit:
        return "modal", "-"
    return kind.name, "-"


def _command_name(interaction: discord.Interaction) -> str:
    try:
        command = interaction.command
    except Exception:  # an interaction of a command this process does not know
        command = None
    if command is not None:
        return command.qualified_name
    data: dict[str, Any] = dict(interaction.data or {})
    return str(data.get("name", "unknown"))


class BotMetrics:
    """Every metric the bot records, on one registry (built in the composition root)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.interactions = Counter(
            "tada_bot_interactions",
            "Interactions received, by type (command, autocomplete, component, modal) and "
            "slash command.",
            ["type", "command"],
            registry=r,
        )
        self.refusals = Counter(
            "tada_bot_refusals",
            "Requests refused with a reason the member can act on (channel, role, quota, "
            "cooldown, moderation, not_linked, ...).",
            ["reason"],
            registry=r,
        )
        self.errors = Counter(
            "tada_bot_errors",
            "Interactions that failed not by the member's doing, by reason (internal: "
            "logged with a reference; tada_unreachable, tada_timeout, tada_unavailable...).",
            ["reason"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "tada_bot_delivery_seconds",
            "Time from a member's request to its result (or failure) posted, by job kind "
            "and where it was posted.",
            ["kind", "destination"],
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.post_seconds = Histogram(
            "tada_bot_post_seconds",
            "Time Discord took to take one result post (retries included), by destination.",
            ["destination"],
            buckets=POST_BUCKETS,
            registry=r,
        )

        self._server: tuple[WSGIServer, threading.Thread] | None = None
        self._host = "127.0.0.1"

    def serve(self, host: str, port: int) -> str:
        """Serve the registry at ``http://host:port/metrics`` in a daemon thread (port 0:
        any free port); returns that URL. :meth:`close` stops it."""
        if self._server is None:
            self._server = start_http_server(port, addr=host, registry=self.registry)
            self._host = host
        url = self.url
        assert url is not None
        log.info("metrics on %s", url)
        return url

    @property
    def url(self) -> str | None:
        """Where the metrics are served, when they are."""
        if self._server is None:
            return None
        port = int(self._server[0].server_address[1])
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{port}/metrics"

    def close(self) -> None:
        """Stop serving (if it did)."""
        served, self._server = self._server, None
        if served is not None:
            server, thread = served
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def interaction(self, interaction: discord.Interaction) -> None:
        """Count one interaction received."""
        kind, command = interaction_labels(interaction)
        self.interactions.labels(type=kind, command=command).inc()

    def refused(self, reason: str) -> None:
        """Count one refusal."""
        self.refusals.labels(reason=reason).inc()

    def failed(self, reason: str) -> None:
        """Count one interaction that failed on our or Ta-da's side."""
        self.errors.labels(reason=reason).inc()

    def delivered(self, kind: str, destination: str, waited: float, posting: float) -> None:
        """Record a posted result: ``waited`` since the request, ``posting`` on Discord."""
        self.delivery_seconds.labels(kind=kind, destination=destination).observe(max(0.0, waited))
        self.post_seconds.labels(destination=destination).observe(max(0.0, posting))


def metrics_of(client: object) -> BotMetrics | None:
    """The metrics of the bot an interaction came to (``None`` for another client)."""
    metrics = getattr(client, "metrics", None)
    return metrics if isinstance(metrics, BotMetrics) else None
