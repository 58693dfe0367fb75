"""Prometheus metrics of the engine: its API, its job workers and its models.

One :class:`EngineMetrics` per process, built in the composition root
(:func:`engine.services.build_services`) on a :class:`~prometheus_client.CollectorRegistry`
of its own (never the library's global one) and passed to what records into it:

- the API (:class:`engine.api.metrics.RequestMetrics`, an ASGI middleware): requests by
  method, *route template* (``/api/voices/{voice_id}``, never the raw path, so ids do not
  multiply the series) and status, and their latency;
- the job worker (:class:`engine.jobs.JobWorker`): each job's duration by kind and outcome,
  and failures by kind and reason;
- the model loads (voice warm-up, the image base model): seconds of the last load;
- at scrape time, from the database (the source of truth for jobs, whichever process runs
  them): jobs queued and running per queue and the age of the oldest queued one
  (:class:`QueueCollector`, on the API's registry only: every API replica reads the same
  rows, so dashboards take ``max`` over instances), and the GPU's memory where torch is
  loaded and CUDA is available (:class:`GpuCollector`).

Where it is scraped: the API serves ``GET /metrics`` only with ``Authorization: Bearer
<TADA_ENGINE_METRICS_TOKEN>`` (no token configured: 404). A ``tada-engine worker`` process
(a separate process, often on another machine) serves its own registry on
``[engine.metrics] worker_port`` (:func:`serve_metrics`), with the same token rule; each
worker is one Prometheus target. That was chosen over prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``): it needs no directory shared by every process (impossible
across machines), no clean-up of dead processes' files, and no environment variable read
at import time.
"""

from __future__ import annotations

import hmac
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

# Latency buckets of API requests (seconds): metadata reads take milliseconds, synchronous
# generations up to the wait timeout.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)
# Job durations (seconds): a speech takes seconds, a training minutes to hours.
JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)


class JobOutcome:
    """The ``outcome`` label of a job run (plain strings, as Prometheus stores them)."""

    SUCCEEDED = "succeeded"  # the handler returned a result
    FAILED = "failed"  # a handler's refusal (JobFailed), or no handler for the kind
    CRASHED = "crashed"  # the handler raised: retried, or failed after the last attempt
    CANCELED = "canceled"  # canceled while running


class EngineMetrics:
    """Every metric the engine records, on one registry (built in the composition root)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tada_engine_http_requests",
            "HTTP requests answered by the engine API, by route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "tada_engine_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template.",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.job_seconds = Histogram(
            "tada_engine_job_duration_seconds",
            "Time a worker spent running a job, by job kind and outcome.",
            ["kind", "outcome"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.job_failures = Counter(
            "tada_engine_job_failures",
            "Job runs that did not succeed, by kind and reason (refused: the handler's "
            "refusal; crashed: an internal error, retried or final; no_handler).",
            ["kind", "reason"],
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "tada_engine_model_load_seconds",
            "Seconds the last load of a model took in this process (voice, image).",
            ["model"],
            registry=r,
        )
        self.model_loads = Counter(
            "tada_engine_model_loads",
            "Model loads in this process (voice, image).",
            ["model"],
            registry=r,
        )
        r.register(GpuCollector())

    def watch_queues(
        self,
        sessions: sessionmaker[Session],
        queue_of: Callable[[str], str],
        names: Iterable[str],
    ) -> None:
        """Report queue depth and the oldest queued job's age from the database at scrape
        time (the API's registry: see the module docstring). ``queue_of`` names a job
        kind's queue; ``names`` are every queue of the layout (reported even when empty)."""
        self.registry.register(QueueCollector(sessions, queue_of, names))

    def job_ran(self, kind: str, outcome: str, seconds: float, reason: str | None = None) -> None:
        """Record one run of a job (``reason`` for a failure: refused, crashed, no_handler)."""
        self.job_seconds.labels(kind=kind, outcome=outcome).observe(seconds)
        if reason is not None:
            self.job_failures.labels(kind=kind, reason=reason).inc()

    def model_loaded(self, model: str, seconds: float) -> None:
        """Record a model load (``model``: voice, image)."""
        self.model_load_seconds.labels(model=model).set(seconds)
        self.model_loads.labels(model=model).inc()


class QueueCollector(Collector):
    """Jobs queued and running per queue, and the oldest queued job's age, read from the
    database when scraped (one grouped query)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        queue_of: Callable[[str], str],
        names: Iterable[str],
    ) -> None:
        self._sessions = sessions
        self._queue_of = queue_of
        self._names = tuple(names)

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "tada_engine_queue_depth",
                "Jobs waiting in each queue (queued, not yet claimed by a worker).",
                labels=["queue"],
            ),
            GaugeMetricFamily(
                "tada_engine_queue_running",
                "Jobs a worker is running now, per queue.",
                labels=["queue"],
            ),
            GaugeMetricFamily(
                "tada_engine_queue_oldest_job_age_seconds",
                "Age of the oldest queued job per queue (0 when none waits).",
                labels=["queue"],
            ),
        ]

    def collect(self) -> Iterable[Metric]:
        from sqlalchemy import func, select

        from engine.models import Job, JobStatus, as_utc, utcnow

        depth, running, oldest = self._families()
        queued: dict[str, int] = {}
        busy: dict[str, int] = {}
        first: dict[str, datetime] = {}
        try:
            with self._sessions() as s:
                rows = s.execute(
                    select(Job.kind, Job.status, func.count(), func.min(Job.created_at))
                    .where(Job.status.in_([JobStatus.QUEUED.value, JobStatus.PROCESSING.value]))
                    .group_by(Job.kind, Job.status)
                ).all()
        except Exception:  # a scrape must answer even when the database is away
            log.warning("metrics: could not read the job queue from the database", exc_info=True)
            return []
        for kind, status, count, created in rows:
            queue = self._queue_of(kind)
            if status == JobStatus.QUEUED.value:
                queued[queue] = queued.get(queue, 0) + int(count)
                if created is not None:
                    created = as_utc(created)
                    first[queue] = min(first.get(queue, created), created)
            else:
                busy[queue] = busy.get(queue, 0) + int(count)
        now = utcnow()
        for queue in sorted({*self._names, *queued, *busy}):
            depth.add_metric([queue], queued.get(queue, 0))
            running.add_metric([queue], busy.get(queue, 0))
            age = (now - first[queue]).total_seconds() if queue in first else 0.0
            oldest.add_metric([queue], max(0.0, age))
        return [depth, running, oldest]


class GpuCollector(Collector):
    """Memory of each CUDA device, where torch is loaded in this process and CUDA is
    available (an API process that never loaded torch does not load it for a scrape)."""

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "tada_engine_gpu_memory_bytes",
                "GPU memory by device and kind: allocated (tensors), reserved (torch's "
                "cache), total (the device's).",
                labels=["device", "name", "kind"],
            )
        ]

    def collect(self) -> Iterable[Metric]:
        (family,) = self._families()
        torch: Any = sys.modules.get("torch")
        if torch is None:
            return [family]
        try:
            if not torch.cuda.is_available():
                return [family]
            for index in range(torch.cuda.device_count()):
                device = str(index)
                name = torch.cuda.get_device_name(index)
                family.add_metric([device, name, "allocated"], torch.cuda.memory_allocated(index))
                family.add_metric([device, name, "reserved"], torch.cuda.memory_reserved(index))
                total = torch.cuda.get_device_properties(index).total_memory
                family.add_metric([device, name, "total"], total)
        except Exception:  # a broken driver must not break the scrape
            log.warning("metrics: could not read GPU memory", exc_info=True)
        return [family]


def bearer_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant time)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), token)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


@dataclass
class MetricsServer:
    """A metrics endpoint in a thread of its own (:func:`serve_metrics`)."""

    server: ThreadingWSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port it listens on (the one the system chose when asked for port 0)."""
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, token: str | None = None
) -> MetricsServer:
    """Serve ``registry`` at ``http://host:port/metrics`` (any path) in a daemon thread.

    With ``token``, a request without ``Authorization: Bearer <token>`` gets 401.
    """
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        if token is not None and not bearer_matches(environ.get("HTTP_AUTHORIZATION"), token):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return iter([b"metrics need Authorization: Bearer <TADA_ENGINE_METRICS_TOKEN>\n"])
        return iter(metrics_app(environ, start_response))

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True)
    thread.start()
    return MetricsServer(server=server, thread=thread)
