"""Prometheus metrics of a model host. One registry per app (no module-level globals), so two apps
in one test process never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .states import ModelState

LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
UNLOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
INFER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
SPARE_STATES = ("none", "starting", "ready")


class HostMetrics:
    def __init__(self, family: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.family = family
        self.state = Gauge(
            "roundhouse_model_state", "1 for the state a model is in, 0 for the others.",
            ["family", "model", "state"], registry=r)
        self.memory = Gauge(
            "roundhouse_model_memory_bytes", "Measured device memory of a resident model (0 when unloaded).",
            ["family", "model"], registry=r)
        self.peak_memory = Gauge(
            "roundhouse_model_peak_memory_bytes", "Peak device memory measured during the model's last load and warm-up.",
            ["family", "model"], registry=r)
        self.transitions = Counter(
            "roundhouse_model_transitions_total", "Model state transitions.",
            ["family", "model", "from_state", "to_state"], registry=r)
        self.load_seconds = Histogram(
            "roundhouse_model_load_seconds", "Time to load a model and pass its warm-up.",
            ["family", "model"], buckets=LOAD_BUCKETS, registry=r)
        self.unload_seconds = Histogram(
            "roundhouse_model_unload_seconds", "Time to unload a model until its memory was released.",
            ["family", "model"], buckets=UNLOAD_BUCKETS, registry=r)
        self.unloads = Counter(
            "roundhouse_model_unloads_total", "Model unloads by reason.",
            ["family", "model", "reason"], registry=r)
        self.load_failures = Counter(
            "roundhouse_model_load_failures_total", "Loads that ended FAILED.",
            ["family", "model"], registry=r)
        self.inference_seconds = Histogram(
            "roundhouse_model_inference_seconds", "Time of one batch in the worker, as seen by the service.",
            ["family", "model"], buckets=INFER_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "roundhouse_model_batch_size", "Items per batch.",
            ["family", "model"], buckets=BATCH_BUCKETS, registry=r)
        self.requests = Counter(
            "roundhouse_model_requests_total", "Inference items by outcome.",
            ["family", "model", "outcome"], registry=r)
        self.oom_events = Counter(
            "roundhouse_model_oom_events_total", "Out-of-memory errors met during inference (batch split or item failed).",
            ["family", "model"], registry=r)
        self.queue_depth = Gauge(
            "roundhouse_model_queue_depth", "Items waiting to be batched.",
            ["family", "model"], registry=r)
        self.in_flight = Gauge(
            "roundhouse_model_leases", "Leases held on a model (requests in flight).",
            ["family", "model"], registry=r)
        self.worker_up = Gauge(
            "roundhouse_model_worker_up", "1 while the worker process runs.", ["family"], registry=r)
        self.worker_restarts = Counter(
            "roundhouse_model_worker_exits_total", "Worker process exits by cause.", ["family", "cause"], registry=r)

        self.spare_state = Gauge(
            "roundhouse_model_spare_state", "1 for the state the family's warm spare worker is in (none, starting, "
            "ready), 0 for the others.", ["family", "state"], registry=r)
        self.spare_memory = Gauge(
            "roundhouse_model_spare_memory_bytes", "Resident host memory of the warm spare worker (0 when none): "
            "what keeping it costs; it holds no device memory.", ["family"], registry=r)
        self.worker_starts = Counter(
            "roundhouse_model_worker_starts_total", "Worker processes that became the family's worker, by source: "
            "spare (a warm spare taken) or cold (started for the load).", ["family", "source"], registry=r)

        self.parked_models = Gauge(
            "roundhouse_model_parked_models", "Models parked in host memory in the live worker.", ["family"], registry=r)
        self.parked_bytes = Gauge(
            "roundhouse_model_parked_host_bytes", "Host memory the parked models' weights take.", ["family"], registry=r)
        self.unpark_seconds = Histogram(
            "roundhouse_model_unpark_seconds", "Time to un-park a model (host memory back to the device) and warm it.",
            ["family", "model"], buckets=UNLOAD_BUCKETS, registry=r)

    def set_spare_state(self, state: str) -> None:
        for s in SPARE_STATES:
            self.spare_state.labels(self.family, s).set(1 if s == state else 0)

    def set_state(self, model: str, state: ModelState) -> None:
        for s in ModelState:
            self.state.labels(self.family, model, s.value).set(1 if s is state else 0)
