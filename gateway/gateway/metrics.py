from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LOAD_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
