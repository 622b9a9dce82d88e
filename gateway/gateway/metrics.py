from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.core import GaugeMetricFamily

from .coordinator.actions import FailKind, UnloadReason

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LOAD_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
RELEASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30)
JOB_ITEM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
# Closed label sets, created at 0 by init_labels.
UPSTREAM_ERROR_KINDS = ("unreachable", "timeout", "status_5xx", "bad_response", "models")
EVICTION_REASONS = tuple(str(r) for r in UnloadReason)  # every label exists at 0 from the start
REJECTION_KINDS = tuple(str(k) for k in FailKind)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._series: dict[tuple[int, tuple[str, ...]], Any] = {}  # series()
        r = self.registry
        self.requests = Counter(
            "roundhouse_gateway_requests_total", "Requests answered, by route template and status class.",
            ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "roundhouse_gateway_request_seconds", "Time to answer a request, by route template.",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_errors = Counter(
            "roundhouse_gateway_upstream_errors_total", "Errors talking to a family service, by kind.",
            ["service", "kind"], registry=r)
        self.model_loads = Counter(
            "roundhouse_gateway_model_loads_total", "Model loads the gateway asked for, by outcome.",
            ["model", "outcome"], registry=r)
        self.model_load_seconds = Histogram(
            "roundhouse_gateway_model_load_seconds", "Time from asking a service to load a model until it was ready.",
            ["model"], buckets=LOAD_BUCKETS, registry=r)
        # The swap coordinator.
        self.loads = self.model_loads
        self.load_seconds = self.model_load_seconds
        self.swaps = Counter(
            "roundhouse_coordinator_swaps_total", "Swaps committed (a model load started by the coordinator).",
            ["device"], registry=r)
        self.evictions = Counter(
            "roundhouse_coordinator_evictions_total", "Models unloaded by the coordinator, by reason.",
            ["model", "reason"], registry=r)
        self.release_unverified = Counter(
            "roundhouse_coordinator_release_unverified_total",
            "Evictions whose release the meter did not confirm within the timeout.", ["model"], registry=r)
        self.release_seconds = Histogram(
            "roundhouse_coordinator_release_seconds", "Time from asking for an unload until the release was verified.",
            ["model"], buckets=RELEASE_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "roundhouse_coordinator_queue_wait_seconds", "Time a request waited for its model to be resident.",
            ["model", "lane"], buckets=WAIT_BUCKETS, registry=r)
        self.rejections = Counter(
            "roundhouse_coordinator_rejections_total", "Requests the coordinator refused, by kind.",
            ["model", "kind"], registry=r)
        # The ledger's gauges are read from the coordinator's Cores at scrape time (LedgerCollector).
        self.ledger = LedgerCollector()
        r.register(self.ledger)
        # Monitoring (dashboards and alerts in monitoring/).
        self.model_request_seconds = Histogram(
            "roundhouse_gateway_model_request_seconds",
            "Time of one model request at the gateway: waiting for its model to be resident, then the service's answer.",
            ["family", "model", "lane", "outcome"], buckets=LATENCY_BUCKETS, registry=r)

        # Bulk jobs (gateway/jobs/).
        self.items = Counter(
            "roundhouse_jobs_items_total", "Job items finished, by task and outcome "
            "(inferred, deduplicated: the same content was inferred before, error, cancelled).",
            ["task", "outcome"], registry=r)
        self.jobs_active = Gauge("roundhouse_jobs_active", "Jobs running now.", registry=r)
        self.item_seconds = Histogram(
            "roundhouse_jobs_item_seconds", "Time to finish one job item (read, hash, wait, infer), by task.",
            ["task"], buckets=JOB_ITEM_BUCKETS, registry=r)

        # The events stream (GET /admin/events; gateway/events.py keeps them).
        self.events_subscribers = Gauge(
            "roundhouse_gateway_events_subscribers", "Clients reading the events stream now.", registry=r)
        self.events_dropped = Counter(
            "roundhouse_gateway_events_subscribers_dropped_total",
            "Events stream clients dropped for falling behind (their bounded queue was full); each may reconnect.",
            registry=r)

    def series(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept for the next time: ``labels()`` checks and converts its values on
        every call (about 2.5 us), and every request asks for the same few series."""
        key = (id(metric), labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = metric.labels(*labels)
        return child

    def init_labels(self, models: Iterable[str], services: Iterable[str]) -> None:
        """Create the counters of closed label sets at 0, so a counter's first event shows in
        rate()/increase() (a series that appears at 1 has no increase) and dashboards show 0s."""
        for service in services:
            for kind in UPSTREAM_ERROR_KINDS:
                self.upstream_errors.labels(service, kind)
        for model in models:
            self.release_unverified.labels(model)
            for outcome in ("loaded", "failed"):
                self.loads.labels(model, outcome)
            for reason in EVICTION_REASONS:
                self.evictions.labels(model, reason)
            for kind in REJECTION_KINDS:
                self.rejections.labels(model, kind)


class LedgerCollector:
    """The coordinator's ledger as gauges, per device and per model, read from its Cores when Prometheus
    scrapes (the route runs on the event loop, like the Cores). They used to be set after every batch of the
    Cores' actions: two per request, each 5 + 3 per model of the device label look-ups, a tenth of the
    gateway's CPU per request on the hot path with one model."""

    def __init__(self) -> None:
        self.cores: Mapping[str, Any] = {}  # device -> gateway.coordinator.core.Core; Coordinator sets it

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        used, unverified, budget, room, foreign, depth, charged, footprint = families = self._families()
        for core in self.cores.values():
            used.add_metric([core.device], core.used_bytes())
            unverified.add_metric([core.device], core.unverified.total())
            budget.add_metric([core.device], core.budget_bytes)
            room.add_metric([core.device], core.capacity())
            foreign.add_metric([core.device], core.foreign_bytes)  # 0 on the host: its ledger charges nothing not ours
            for model, q in core.queues.items():
                r = core.resident.get(model)
                depth.add_metric([model], len(q))
                charged.add_metric([core.device, model], r.charged_bytes if r else 0)
                footprint.add_metric([core.device, model], core.models[model].footprint_bytes)
        yield from families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "roundhouse_coordinator_ledger_used_bytes",
                "Bytes the ledger charges (resident + loading + unverified).", labels=["device"]),
            GaugeMetricFamily(
                "roundhouse_coordinator_unverified_bytes",
                "Bytes the ledger still charges for releases the meter did not confirm (part of ledger_used_bytes), "
                "until the meter shows them back, the service's worker is gone or an operator forgets them.",
                labels=["device"]),
            GaugeMetricFamily("roundhouse_coordinator_budget_bytes", "The device's memory budget.", labels=["device"]),
            GaugeMetricFamily(
                "roundhouse_coordinator_room_bytes",
                "What the ledger may charge now: the budget, or the device's total less the reserve and the memory "
                "not ours when that is smaller.", labels=["device"]),
            GaugeMetricFamily(
                "roundhouse_coordinator_foreign_bytes",
                "Memory on a metered device that is not ours (another process on the GPU): its used bytes beyond "
                "every charge of the ledger, at the last reading taken while nothing loaded or unloaded; 0 on a "
                "device without a meter (the host), whose ledger charges nothing not ours.", labels=["device"]),
            GaugeMetricFamily("roundhouse_coordinator_queue_depth", "Requests waiting for their model.", labels=["model"]),
            GaugeMetricFamily(
                "roundhouse_coordinator_model_charged_bytes", "Bytes the ledger charges a resident model (0 otherwise).",
                labels=["device", "model"]),
            GaugeMetricFamily(
                "roundhouse_coordinator_footprint_bytes",
                "Bytes the ledger admits a model by: its measured peak once loaded, else the catalog's estimate.",
                labels=["device", "model"]),
        ]
