"""deploy/: the production layout's files say what the code does. Its config loads for both
halves as a production layout; every command in the compose file and the Procfile is a
valid role of ``tada-engine``; the migrations run once, apart; every job family has a
worker; the bot starts no engine."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml
from cryptography.fernet import Fernet

from bot.config import load_bot_config
from engine.cli import build_parser
from engine.jobs import QUEUES
from engine.settings import load_engine_settings, read_config_file

DEPLOY = Path(__file__).parents[1] / "deploy"
SECRETS = {
    "TADA_ENGINE_SECRET_KEY": "s" * 48,
    "TADA_ENGINE_REGISTRATION_TOKEN": "t" * 24,
    "TADA_ENGINE_METRICS_TOKEN": "m" * 32,
    "DISCORD_TOKEN": "a.b.c",
    "TADA_BOT_ENCRYPTION_KEY": Fernet.generate_key().decode(),
}


def _commands() -> list[list[str]]:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    found = [s["command"] for s in compose["services"].values() if "command" in s]
    for line in (DEPLOY / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            found.append(shlex.split(line.split(":", 1)[1]))
    return [c for c in found if c[0] in ("tada-engine", "tada-bot")]


def test_the_config_is_a_production_layout_for_both_halves() -> None:
    engine = load_engine_settings(DEPLOY / "config.toml", environ=SECRETS)
    assert engine.mode == "production"
    assert engine.jobs.backend == "redis" and engine.jobs.split_queues
    assert engine.jobs.in_process_workers == 0
    assert engine.resolved_database_url.startswith("postgresql+asyncpg://")
    assert engine.limits.storage_uri.startswith("redis://")
    bot = load_bot_config(read_config_file(DEPLOY / "config.toml"), environ=SECRETS)
    assert not bot.tada.embedded and bot.database_url.startswith("postgresql+asyncpg://")


def test_every_command_is_a_role_and_every_queue_has_a_worker() -> None:
    commands = _commands()
    served, migrations, taken = 0, 0, []
    for command in commands:
        if command[0] == "tada-bot":
            assert "--no-sandbox" in command
            continue
        args = build_parser().parse_args(command[1:])
        if args.command == "serve":
            assert args.no_consumers, command  # API processes run no jobs
            served += 1
        elif args.command == "migrate":
            migrations += 1
        elif args.command == "worker":
            assert args.queues, command
            taken += args.queues
    assert served >= 4  # two API processes in each file
    assert migrations == 2  # once, before the roles start, in each file
    assert sorted(set(taken)) == sorted(QUEUES)


DASHBOARD = DEPLOY / "grafana-dashboard.json"
# What Prometheus adds to every series, and histogram buckets' bound.
IMPLICIT_LABELS = {"job", "instance", "le"}
# The series a family of each type is exposed as (Prometheus' text format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


def exported_series() -> dict[str, set[str]]:
    """Every series name the engine (API and workers) and the bot export, with its labels."""
    from prometheus_client.metrics import MetricWrapperBase

    from bot.metrics import BotMetrics
    from engine.metrics import EngineMetrics, QueueCollector

    # (name, type, label names) of every family: the metric objects the two classes build
    # (prometheus_client keeps their label names in ``_labelnames``), and the families the
    # custom collectors describe (the queue's, read from the database at scrape time).
    families: list[tuple[str, str, set[str]]] = []
    engine, bot = EngineMetrics(), BotMetrics()
    for owner in (engine, bot):
        for metric in vars(owner).values():
            if isinstance(metric, MetricWrapperBase):
                families.append((metric._name, str(metric._type), set(metric._labelnames)))
    described = [
        *QueueCollector(None, str, ()).describe(),  # type: ignore[arg-type]
        *(family for family in engine.registry.collect() if family.type == "gauge"),
    ]
    for family in described:
        labels = set(getattr(family, "_labelnames", ()))
        families.append((family.name, family.type, labels))
    found: dict[str, set[str]] = {}
    for name, kind, labels in families:
        for suffix in SUFFIXES[kind]:
            found[name + suffix] = found.get(name + suffix, set()) | labels
    return found


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["definition"])
    return queries


def test_every_metric_the_dashboard_queries_is_exported_with_its_labels() -> None:
    exported = exported_series()
    queries = dashboard_queries()
    assert len(queries) >= 15
    used: set[str] = set()
    problems = []
    for query in queries:
        for name, selector in re.findall(r"\b(tada_[a-z0-9_]+)(\{[^}]*\})?", query):
            used.add(name)
            if name not in exported:
                problems.append(f"{name} is not exported: {query}")
                continue
            keys = set(re.findall(r"([a-z_]+)\s*(?:=~|!=|!~|=)", selector))
            unknown = keys - exported[name] - IMPLICIT_LABELS
            if unknown:
                problems.append(f"{name} has no label {sorted(unknown)}: {query}")
        for group in re.findall(r"\bby \(([^)]*)\)", query):
            names = re.findall(r"\b(tada_[a-z0-9_]+)", query)
            labels = set().union(*(exported.get(n, set()) for n in names))
            unknown = {g.strip() for g in group.split(",")} - labels - IMPLICIT_LABELS
            if unknown:
                problems.append(f"grouped by unknown label(s) {sorted(unknown)}: {query}")
    assert problems == []
    # Every part operators were promised is on the dashboard.
    for family in (
        "tada_engine_http_requests_total",
        "tada_engine_http_request_duration_seconds_bucket",
        "tada_engine_queue_depth",
        "tada_engine_queue_oldest_job_age_seconds",
        "tada_engine_job_duration_seconds_bucket",
        "tada_engine_job_failures_total",
        "tada_engine_model_load_seconds",
        "tada_engine_gpu_memory_bytes",
        "tada_bot_interactions_total",
        "tada_bot_refusals_total",
        "tada_bot_delivery_seconds_bucket",
    ):
        assert family in used, family


def test_the_scrape_config_reads_every_role_with_the_token() -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert set(jobs) == {"tada-engine-api", "tada-engine-worker", "tada-bot"}
    for name in ("tada-engine-api", "tada-engine-worker"):
        assert jobs[name]["authorization"]["type"] == "Bearer"
    settings = load_engine_settings(DEPLOY / "config.toml", environ=SECRETS)
    workers = jobs["tada-engine-worker"]["static_configs"][0]["targets"]
    assert {target.rsplit(":", 1)[1] for target in workers} == {str(settings.metrics.worker_port)}
