"""The gateway's /metrics as Prometheus scrapes it (app tier: the whole create_app(); NVML is the one
thing faked, through a fake ``pynvml`` module): GPU metrics, the counters that exist at 0 before
their first event, per-family request latency and upstream errors by kind."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import CoordinatorSettings, GatewaySettings
from gateway.main import create_app
from tests.doubles.fake_nvml import FakeNvml, one_gpu
from tests.procs import free_port

CATALOG = """\
defaults: {device: cpu}
models:
  - {id: cap-a, family: caption, backend: blip, source: ./nowhere-a, memory_estimate_mb: 64}
  - {id: cap-b, family: caption, backend: blip, source: ./nowhere-b, memory_estimate_mb: 96}
"""


def make_app(tmp_path: Path):
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: the service is down
    settings = GatewaySettings(catalog=tmp_path / "catalog.yaml", services={"caption": down})
    return create_app(settings, CoordinatorSettings(data_dir=tmp_path / "data", memory_budget_mb={"cpu": 1024},
                                                    reconcile_interval_s=None))


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


async def scrape_after(app, *requests: tuple[str, str, dict]) -> dict[tuple[str, frozenset], float]:
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            for method, path, kwargs in requests:
                await c.request(method, path, **kwargs)
            r = await c.get("/metrics")
            assert r.status_code == 200
            return samples(r.text)


def labels(**kv: str) -> frozenset:
    return frozenset(kv.items())


@pytest.mark.app
async def test_gpu_metrics_from_nvml_are_in_the_gateways_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", one_gpu())
    m = await scrape_after(make_app(tmp_path))
    gpu = labels(gpu="0", uuid="GPU-00000000-fake-0000-0000-000000000000", name="Fake RTX 3060")
    assert m[("roundhouse_gpu_nvml_available", frozenset())] == 1
    assert m[("roundhouse_gpu_memory_total_bytes", gpu)] == 12 * 2**30
    assert m[("roundhouse_gpu_power_watts", gpu)] == 95.5


@pytest.mark.app
async def test_without_nvml_the_gateway_exports_nvml_available_zero_and_no_gpu_series(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error="NVML Shared Library Not Found"))
    m = await scrape_after(make_app(tmp_path))
    gpu_samples = {k: v for k, v in m.items() if k[0].startswith("roundhouse_gpu_")}
    assert gpu_samples == {("roundhouse_gpu_nvml_available", frozenset()): 0}


@pytest.mark.app
async def test_alerting_counters_exist_at_zero_before_their_first_event(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error="absent"))
    m = await scrape_after(make_app(tmp_path))
    for kind in ("unreachable", "timeout", "status_5xx", "bad_response"):
        assert m[("roundhouse_gateway_upstream_errors_total", labels(service="caption-svc", kind=kind))] == 0
    for model in ("cap-a", "cap-b"):
        assert m[("roundhouse_coordinator_release_unverified_total", labels(model=model))] == 0
        assert m[("roundhouse_gateway_model_loads_total", labels(model=model, outcome="failed"))] == 0
        assert m[("roundhouse_coordinator_evictions_total", labels(model=model, reason="swap"))] == 0


@pytest.mark.app
async def test_a_model_request_to_a_down_service_is_timed_per_family_as_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error="absent"))
    m = await scrape_after(make_app(tmp_path), ("POST", "/v1/images/captions", {
        "json": {"model": "cap-a", "image": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="}}))
    # The coordinator's load meets the down service first: the request fails, timed as an error.
    assert m[("roundhouse_gateway_model_request_seconds_count",
              labels(family="caption", model="cap-a", lane="interactive", outcome="error"))] == 1
    assert m[("roundhouse_gateway_model_loads_total", labels(model="cap-a", outcome="failed"))] >= 1


@pytest.mark.app
async def test_the_ledger_exports_each_models_footprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error="absent"))
    m = await scrape_after(make_app(tmp_path), ("POST", "/admin/models/cap-b/load", {}))
    assert m[("roundhouse_coordinator_footprint_bytes", labels(device="cpu", model="cap-b"))] == 96 * 2**20
    assert m[("roundhouse_coordinator_budget_bytes", labels(device="cpu"))] == 1024 * 2**20


# ModelAccess alone (unit): the coordinator grants at once; the service's answer is the call's.

class GrantingCoordinator:
    def __init__(self) -> None:
        self.held = 0

    async def acquire(self, model: str, *, lane: str, timeout_s: float) -> None:
        self.held += 1

    def release(self, model: str) -> None:
        self.held -= 1

    def vanished(self, model: str) -> None:
        pass

    def schedule_reconcile(self, family: str) -> None:
        pass


def access_with(tmp_path: Path):
    from gateway.access import ModelAccess
    from gateway.metrics import GatewayMetrics
    from modelhost.catalog import load_catalog

    (tmp_path / "catalog.yaml").write_text(CATALOG)
    metrics = GatewayMetrics()
    client = type("Client", (), {"name": "caption-svc"})()
    coordinator = GrantingCoordinator()
    return ModelAccess(load_catalog(tmp_path / "catalog.yaml"), {"caption": client}, metrics, coordinator,
                       request_timeout_s=5), metrics, coordinator


def value(metrics, name: str, **kv: str) -> float:
    return metrics.registry.get_sample_value(name, kv) or 0.0


@pytest.mark.unit
@pytest.mark.parametrize(("error", "kind"), [
    ("envelope_500", "status_5xx"), ("timeout", "timeout"), ("no_envelope", "bad_response")])
async def test_each_kind_of_upstream_failure_is_counted_once_by_kind(tmp_path: Path, error: str, kind: str) -> None:
    from modelhost.client import UpstreamEnvelope
    from modelhost.errors import DeadlineExceeded, UpstreamError

    access, metrics, coordinator = access_with(tmp_path)
    raised = {
        "envelope_500": UpstreamEnvelope(500, {"src": "caption-svc", "error": {"code": "inference_failed", "message": "x"}}, None),
        "timeout": DeadlineExceeded("caption-svc did not answer", code="upstream_timeout"),
        "no_envelope": UpstreamError("caption-svc answered 502 without an error envelope", code="bad_upstream_response"),
    }[error]

    with pytest.raises(type(raised)):
        async with access.hold("cap-a", "caption"):
            raise raised  # what the upstream call raised
    counts = {k: value(metrics, "roundhouse_gateway_upstream_errors_total", service="caption-svc", kind=k)
              for k in ("status_5xx", "timeout", "bad_response", "unreachable")}
    assert counts == {k: (1.0 if k == kind else 0.0) for k in counts}
    assert value(metrics, "roundhouse_gateway_model_request_seconds_count",
                 family="caption", model="cap-a", lane="interactive", outcome="error") == 1
    assert coordinator.held == 0


@pytest.mark.unit
async def test_a_4xx_answer_is_not_an_upstream_error_and_a_success_is_timed_as_ok(tmp_path: Path) -> None:
    from modelhost.client import UpstreamEnvelope

    access, metrics, _ = access_with(tmp_path)

    with pytest.raises(UpstreamEnvelope):
        async with access.hold("cap-b", "caption"):
            raise UpstreamEnvelope(400, {"src": "caption-svc", "error": {"code": "corrupt_image", "message": "x"}}, None)
    async with access.hold("cap-b", "caption") as upstream:
        assert upstream.model == "cap-b"
    assert metrics.registry.get_sample_value("roundhouse_gateway_upstream_errors_total",
                                             {"service": "caption-svc", "kind": "status_5xx"}) is None
    assert value(metrics, "roundhouse_gateway_model_request_seconds_count",
                 family="caption", model="cap-b", lane="interactive", outcome="ok") == 1
