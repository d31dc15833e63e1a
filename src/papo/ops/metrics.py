"""Prometheus metrics. Labels are bounded vocabularies (route templates, statuses, providers, models,
transports); never user ids, tenant ids or message text.

Counters and histograms live in the process that observed them. With several worker processes
(`papo serve --workers N`) the server points PROMETHEUS_MULTIPROC_DIR at a directory under the data
dir before the workers start, and a scrape of any one worker sums them all. What the database
already knows (WhatsApp sessions by status, queue depths) is read from it at scrape time, so it
is right however many processes there are."""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from papo.settings import Settings

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUESTS = Counter("papo_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "papo_http_request_duration_seconds", "Time to answer an HTTP request", ["method", "route"], buckets=(*_FAST, 5.0)
)
DB_QUERY_LATENCY = Histogram("papo_db_query_duration_seconds", "Time of one database statement", buckets=_FAST)
DB_QUERY_ERRORS = Counter("papo_db_query_errors_total", "Database statements that raised")
DB_POOL_IN_USE = Gauge("papo_db_pool_connections_in_use", "Pooled connections checked out", multiprocess_mode="livesum")
DB_POOL_OPEN = Gauge("papo_db_pool_connections_open", "Pooled connections open", multiprocess_mode="livesum")
REALTIME_CONNECTIONS = Gauge(
    "papo_realtime_connections", "Open realtime streams", ["transport"], multiprocess_mode="livesum"
)
REALTIME_EVENT_LAG = Histogram(
    "papo_realtime_event_lag_seconds", "From an event's commit to its hand-over to local streams", buckets=_FAST
)
AI_REPLIES = Counter("papo_ai_replies_total", "AI replies by how they ended", ["provider", "model", "outcome"])
AI_TOKENS = Counter("papo_ai_tokens_total", "AI tokens used", ["provider", "model", "kind"])
AI_FIRST_TOKEN = Histogram(
    "papo_ai_time_to_first_token_seconds", "From the request to the first token", ["provider", "model"], buckets=_SLOW
)
WHATSAPP_MESSAGES = Counter("papo_whatsapp_messages_total", "WhatsApp messages", ["transport", "direction"])
RATE_LIMITED = Counter("papo_rate_limited_total", "Requests refused by a rate limit", ["limit"])
WEBHOOK_ATTEMPTS = Counter("papo_webhook_attempts_total", "Outbound webhook attempts by outcome", ["outcome"])
ALERTS_SENT = Counter("papo_alerts_sent_total", "Alert notifications sent", ["rule", "state", "channel"])


# What the database knows about the work in progress, for a scrape and for the alert rules: WhatsApp
# sessions by status, and depth/age of each queue (definer functions, numbers only).
OPERATIONAL_COUNTS_SQL = (
    "SELECT metric, label, value FROM papo_ops_snapshot() "
    "UNION ALL SELECT * FROM papo_outbox_backlog() UNION ALL SELECT * FROM papo_webhook_backlog()"
)


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROCESS_ENV))


def fresh_metrics_dir(settings: Settings) -> Path:
    """The workers' shared metrics directory, emptied: counters start at zero with the server."""
    directory = settings.data_dir.resolve() / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


class BoundedLabel:
    """Label values that come from tenant input (the model name an admin typed). Each distinct value
    is a new series in every scrape and in the process's memory, so at most `limit` distinct values
    get their own series (per process, first come), each cut to `max_length` characters of a plain
    alphabet; everything past the limit is counted under "other". `known` values always pass."""

    OTHER, UNKNOWN = "other", "unknown"
    _UNSAFE = re.compile(r"[^A-Za-z0-9._:/@+-]")

    def __init__(self, limit: int, *, max_length: int = 64, known: Iterable[str] = ()) -> None:
        self.limit = limit
        self.max_length = max_length
        self.known = frozenset(known)
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, value: object) -> str:
        if value is None or value == "":
            return self.UNKNOWN
        label = self._UNSAFE.sub("_", str(value)[: self.max_length])
        if label in self.known or label in self.seen:
            return label
        with self.lock:
            if len(self.seen) >= self.limit:
                return self.OTHER
            self.seen.add(label)
        return label


# Providers are a fixed vocabulary; models are whatever a tenant admin configures.
PROVIDER_LABEL = BoundedLabel(0, known=("openai", "demo"))
MODEL_LABEL = BoundedLabel(50)


def record_ai_reply(meta: dict[str, Any], outcome: str) -> None:
    """One finished reply (complete, failed, interrupted) from its metadata."""
    provider, model = PROVIDER_LABEL(meta.get("provider")), MODEL_LABEL(meta.get("model"))
    AI_REPLIES.labels(provider, model, outcome).inc()
    usage = meta.get("usage") or {}
    for kind in ("prompt", "completion"):
        tokens = usage.get(f"{kind}_tokens")
        if isinstance(tokens, int) and tokens > 0:
            AI_TOKENS.labels(provider, model, kind).inc(tokens)
    first_token_ms = meta.get("time_to_first_token_ms")
    if outcome == "complete" and isinstance(first_token_ms, int | float):
        AI_FIRST_TOKEN.labels(provider, model).observe(first_token_ms / 1000)


class DatabaseMetrics:
    """Attached to the database layer (papo.db.engine.DatabaseObserver): statement latency and
    errors, pool connections open and in use."""

    @staticmethod
    def query(record: Any) -> None:
        DB_QUERY_LATENCY.observe(record.elapsed)
        if record.exception is not None:
            DB_QUERY_ERRORS.inc()

    @staticmethod
    def pool(in_use: int, open_connections: int) -> None:
        DB_POOL_IN_USE.set(in_use)
        DB_POOL_OPEN.set(open_connections)


DatabaseGauges = dict[str, tuple[str, list[str], list[tuple[tuple[str, ...], float]]]]


def render(database_gauges: DatabaseGauges) -> bytes:
    """The exposition text: this process's (or every worker's) series plus gauges read from the database.

    `database_gauges` maps a metric name to (help, label names, [(label values, value)])."""
    if multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        own = generate_latest(registry)
    else:
        from prometheus_client import REGISTRY

        own = generate_latest(REGISTRY)
    snapshot = CollectorRegistry()
    snapshot.register(_Snapshot(database_gauges))
    return own + generate_latest(snapshot)


class _Snapshot(Collector):
    """Values read once for this scrape. Metric families, not Gauge objects: in multi-process mode a
    Gauge writes to the shared directory, and these values belong to no process."""

    def __init__(self, gauges: DatabaseGauges) -> None:
        self.gauges = gauges

    def collect(self) -> Iterable[Metric]:
        for name, (help_text, label_names, samples) in self.gauges.items():
            family = GaugeMetricFamily(name, help_text, labels=label_names)
            for label_values, value in samples:
                family.add_metric(list(label_values), value)
            yield family
