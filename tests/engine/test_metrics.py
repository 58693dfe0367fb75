"""The engine's Prometheus metrics: only for the operator's token, and they move with real
requests and real jobs (run by the real worker through the real queue)."""

from __future__ import annotations

from pathlib import Path

import anyio.to_thread
import httpx
from prometheus_client.parser import text_string_to_metric_families

from engine.jobs import JobContext, JobFailed
from engine.metrics import serve_metrics
from engine.settings import MetricsSettings
from tests.conftest import make_settings, register, running_engine, services_of

TOKEN = "m" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def ok(ctx: JobContext) -> dict:
    return {"done": True}


def refuse(ctx: JobContext) -> dict:
    raise JobFailed("the sample is silent")


HANDLERS = {"voice.test_ok": ok, "image.test_refuse": refuse}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


async def test_no_token_configured_means_no_metrics_endpoint(tmp_path: Path) -> None:
    async with running_engine(make_settings(tmp_path)) as (_, api):
        resp = await api.get("/metrics", headers=AUTH)
        assert resp.status_code == 404
        assert "/metrics" not in (await api.get("/openapi.json")).text


async def test_metrics_are_refused_without_the_token_and_move_with_requests_and_jobs(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path,
        metrics=MetricsSettings(token=TOKEN),
        jobs={"split_queues": True, "in_process_workers": 0},
    )
    async with running_engine(settings, HANDLERS) as (app, api):
        assert (await api.get("/metrics")).status_code == 401
        wrong = await api.get("/metrics", headers={"Authorization": "Bearer " + "x" * 32})
        assert wrong.status_code == 401 and wrong.json()["detail"]
        before = (await api.get("/metrics", headers=AUTH)).text

        key = await register(api)
        voices = await api.get("/api/voices", headers={"X-API-Key": key})
        assert voices.status_code == 200
        missing = await api.get("/api/voices/no-such-voice", headers={"X-API-Key": key})
        assert missing.status_code == 404

        jobs = services_of(app).jobs
        await jobs.submit("voice.test_ok", {})
        await jobs.submit("image.test_refuse", {})
        queued = (await api.get("/metrics", headers=AUTH)).text
        assert value(queued, "tada_engine_queue_depth", queue="voice") == 1
        assert value(queued, "tada_engine_queue_depth", queue="image") == 1
        assert value(queued, "tada_engine_queue_oldest_job_age_seconds", queue="image") > 0

        assert await anyio.to_thread.run_sync(services_of(app).worker.drain) == 2
        after = (await api.get("/metrics", headers=AUTH)).text

    route = {"method": "GET", "route": "/api/voices/{voice_id}"}
    assert value(after, "tada_engine_http_requests_total", status="404", **route) == 1
    assert value(before, "tada_engine_http_requests_total", status="404", **route) == 0
    # The raw path is never a label: one series per route template.
    assert "no-such-voice" not in after
    assert value(after, "tada_engine_http_request_duration_seconds_count", **route) == 1
    assert (
        value(
            after,
            "tada_engine_http_requests_total",
            method="POST",
            route="/api/users/register",
            status="200",
        )
        == 1
    )
    assert value(after, "tada_engine_queue_depth", queue="voice") == 0
    assert (
        value(
            after,
            "tada_engine_job_duration_seconds_count",
            kind="voice.test_ok",
            outcome="succeeded",
        )
        == 1
    )
    assert (
        value(after, "tada_engine_job_failures_total", kind="image.test_refuse", reason="refused")
        == 1
    )
    assert (
        value(after, "tada_engine_job_failures_total", kind="voice.test_ok", reason="refused") == 0
    )


def test_a_worker_serves_its_registry_on_its_own_port_behind_the_token() -> None:
    from engine.metrics import EngineMetrics

    metrics = EngineMetrics()
    metrics.job_ran("image.generate", "succeeded", 1.5)
    server = serve_metrics(metrics.registry, "127.0.0.1", 0, token=TOKEN)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        assert httpx.get(url).status_code == 401
        resp = httpx.get(url, headers=AUTH)
        assert resp.status_code == 200
        assert (
            value(
                resp.text,
                "tada_engine_job_duration_seconds_count",
                kind="image.generate",
                outcome="succeeded",
            )
            == 1
        )
    finally:
        server.close()


def test_the_token_comes_from_the_environment_and_reaches_a_child(tmp_path: Path) -> None:
    import pytest

    from engine.settings import (
        SettingsError,
        load_engine_settings,
        settings_for_child,
        settings_from_parent,
    )

    config = tmp_path / "config.toml"
    config.write_text('[engine.metrics]\ntoken = "in-the-file-is-refused"\n')
    with pytest.raises(SettingsError, match="TADA_ENGINE_METRICS_TOKEN"):
        load_engine_settings(config, environ={})
    config.write_text('[engine.metrics]\nworker_host = "0.0.0.0"\nworker_port = 9101\n')
    # Beyond loopback, a worker's metrics need the token.
    with pytest.raises(SettingsError, match="TADA_ENGINE_METRICS_TOKEN"):
        load_engine_settings(config, environ={})
    settings = load_engine_settings(config, environ={"TADA_ENGINE_METRICS_TOKEN": TOKEN})
    assert settings.metrics.token is not None
    assert TOKEN not in repr(settings)
    child = settings_from_parent({"TADA_ENGINE_SETTINGS_JSON": settings_for_child(settings)})
    assert child is not None and child.metrics.token is not None
    assert child.metrics.token.get_secret_value() == TOKEN


async def test_refusals_before_routing_and_unknown_paths_keep_few_series(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, metrics=MetricsSettings(token=TOKEN))
    async with running_engine(settings) as (_, api):
        key = await register(api)
        too_big = "x" * (settings.limits.max_json_body_bytes + 1)
        resp = await api.post(
            "/api/voices/v1/generations",
            content=f'{{"text": "{too_big}"}}',
            headers={"X-API-Key": key, "Content-Type": "application/json"},
        )
        assert resp.status_code == 413
        for path in ("/nope/1", "/nope/2", "/api/nothing-here"):
            assert (await api.get(path)).status_code == 404
        text = (await api.get("/metrics", headers=AUTH)).text
    # The guard answered before routing: the request still counts under its template.
    refused = {"method": "POST", "route": "/api/voices/{voice_id}/generations", "status": "413"}
    assert value(text, "tada_engine_http_requests_total", **refused) == 1
    unmatched = {"method": "GET", "route": "<unmatched>", "status": "404"}
    assert value(text, "tada_engine_http_requests_total", **unmatched) == 3
    assert "/nope/1" not in text and "v1" not in text


def test_gpu_memory_is_read_from_torch_when_cuda_is_there(monkeypatch) -> None:
    """The collector's reading of torch.cuda, with a stand-in for a machine with one GPU
    (the test machines have none; a real GPU worker reports the same three series)."""
    import sys
    from types import SimpleNamespace

    from engine.metrics import GpuCollector

    cuda = SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 1,
        get_device_name=lambda i: "NVIDIA H100",
        memory_allocated=lambda i: 1_000,
        memory_reserved=lambda i: 2_000,
        get_device_properties=lambda i: SimpleNamespace(total_memory=80_000),
    )
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    (family,) = GpuCollector().collect()
    assert {s.labels["kind"]: s.value for s in family.samples} == {
        "allocated": 1_000,
        "reserved": 2_000,
        "total": 80_000,
    }
    assert {s.labels["device"] for s in family.samples} == {"0"}
    monkeypatch.setitem(
        sys.modules, "torch", SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: False))
    )
    (family,) = GpuCollector().collect()
    assert family.samples == []
