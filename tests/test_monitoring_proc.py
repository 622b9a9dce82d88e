"""A real Prometheus scrapes the running stack while a scripted workload runs, and then every query
of every dashboard returns data.

The stack: the gateway and the caption service as processes on loopback (as in
test_coordinator_proc.py, with a CPU budget that holds one tiny caption model at a time, so loading
another is a real swap with an eviction), and Debian's Prometheus with monitoring/prometheus's own
rules and job names, its targets pointed at those processes, scraping every second. The one thing
faked is the GPU: the gateway runs with a fake NVML (tests/doubles/fake_nvml.py), so the GPU panels
have a device to show on a machine without one."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests import monitoring_fixtures as mf
from tests import procs
from tests.conftest import image_bytes

pytestmark = pytest.mark.proc

BUDGET_MB = 1100  # one caption worker with torch and one tiny model fits; two do not
SCRAPED = ("gateway", "caption-svc", "prometheus")


def start_gateway_with_fake_gpu(catalog: Path, services: dict[str, str], logdir: Path, data_dir: Path) -> procs.Proc:
    import json

    port = procs.free_port()
    env = {"GATEWAY_CATALOG": str(catalog), "GATEWAY_PORT": str(port), "GATEWAY_SERVICES": json.dumps(services),
           "GATEWAY_DATA_DIR": str(data_dir), "GATEWAY_MEMORY_BUDGET_MB": json.dumps({"cpu": BUDGET_MB}),
           "GATEWAY_RECONCILE_INTERVAL_S": "1"}
    code = "from tests.doubles.fake_nvml import install; install(); from gateway.main import main; main()"
    return procs.start("gateway-monitoring", [str(procs.GATEWAY_PY), "-c", code], env, port, logdir)


def prometheus_config(targets: dict[str, str]) -> dict:
    """monitoring/prometheus/prometheus.yml with its rules and job names, its targets on loopback,
    scraping and evaluating every second; jobs without a process here are left out."""
    config = yaml.safe_load(mf.PROMETHEUS_YML.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str((mf.PROMETHEUS_YML.parent / f).resolve()) for f in config["rule_files"]]
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] in targets:
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
            jobs.append(job)
    config["scrape_configs"] = jobs
    return config


@pytest.fixture(scope="module")
def stack(tiny_catalog: Path, logdir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("monitoring-stack")
    catalog = procs.standalone_catalog(tiny_catalog, tmp / "catalog", family="caption")
    started: list[procs.Proc] = []
    try:
        svc = procs.start_caption_svc(catalog, logdir)
        started.append(svc)
        gw = start_gateway_with_fake_gpu(catalog, {"caption": svc.url}, logdir, tmp / "gateway-data")
        started.append(gw)
        prom_port = procs.free_port()
        targets = {"gateway": f"127.0.0.1:{gw.port}", "caption-svc": f"127.0.0.1:{svc.port}",
                   "prometheus": f"127.0.0.1:{prom_port}"}
        config = prometheus_config(targets)
        prom = mf.start_prometheus(config, tmp / "prometheus", logdir, name="prometheus-stack", port=prom_port)
        started.append(prom)
        yield gw, svc, prom
    finally:
        for p in reversed(started):
            p.stop()


def caption(url: str, model: str) -> httpx.Response:
    return httpx.post(url + "/v1/images/captions", files={"file": ("a.png", image_bytes("PNG"))},
                      data={"model": model}, timeout=180)


def run_workload(gw: procs.Proc) -> None:
    """Captions, a bad request, a swap through the admin API, an unload, and a swap back."""
    for _ in range(3):
        r = caption(gw.url, "tiny-blip")
        assert r.status_code == 200, r.text
    assert caption(gw.url, "no-such-model").status_code == 404
    r = httpx.post(gw.url + "/admin/models/tiny-qwen25vl/load", timeout=180)  # evicts tiny-blip: a swap
    assert r.status_code == 200, r.text
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        assert [r.status_code for r in pool.map(lambda _: caption(gw.url, "tiny-qwen25vl"), range(3))] == [200] * 3
    r = httpx.post(gw.url + "/admin/models/tiny-qwen25vl/unload", params={"drain": "true"}, timeout=180)
    assert r.status_code == 200, r.text
    r = caption(gw.url, "tiny-blip")  # loads it again
    assert r.status_code == 200, r.text


def newest(prom: procs.Proc, promql: str) -> float:
    """The oldest of the sample timestamps ``timestamp(promql)`` returns (-1 when none)."""
    _, body = mf.query(prom.url, f"min(timestamp({promql}))")
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else -1.0


@pytest.fixture(scope="module")
def observed(stack):
    """The stack after the workload, once Prometheus has scraped every target since it ended and
    evaluated its rules on those scrapes."""
    gw, svc, prom = stack
    run_workload(gw)
    ended = time.time()
    procs.wait_until(lambda: newest(prom, "up") > ended, timeout_s=20, interval_s=0.2)
    scraped = time.time()
    procs.wait_until(lambda: newest(prom, "model:roundhouse_model_state:code") > scraped, timeout_s=20, interval_s=0.2)
    return stack


def gateway_swaps(gw: procs.Proc) -> float:
    text = httpx.get(gw.url + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("roundhouse_coordinator_swaps_total{"))


def scraped_swaps(prom: procs.Proc) -> float:
    _, body = mf.query(prom.url, "sum(roundhouse_coordinator_swaps_total)")
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else -1.0


def test_after_a_workload_every_dashboard_query_returns_data_and_no_alert_fires(observed) -> None:
    gw, svc, prom = observed
    swaps = gateway_swaps(gw)
    assert swaps == 3  # tiny-blip, tiny-qwen25vl (evicting tiny-blip), tiny-blip again
    assert scraped_swaps(prom) == swaps

    # Every query, as Grafana sends it with the variables at "All"; recording rules and rate
    # windows may need a few more evaluations, so each query gets a deadline, not one try.
    empty: list[str] = []
    deadline = time.monotonic() + 20
    for q in mf.all_queries():
        while True:
            status, body = mf.query(prom.url, q.promql())
            assert status == 200, f"{q.dashboard} {q.where}: {body}"
            if body["data"]["result"]:
                break
            if time.monotonic() > deadline:
                empty.append(f"{q.dashboard} {q.where}: {q.promql()}")
                break
            time.sleep(0.25)
    assert not empty, "dashboard queries without a series after the workload:\n" + "\n".join(empty)

    # Every target was scraped, every rule evaluates without error against real data, none fires.
    _, up = mf.query(prom.url, "up")
    assert {r["metric"]["job"]: r["value"][1] for r in up["data"]["result"]} == {job: "1" for job in SCRAPED}
    groups = mf.get_json(prom.url + "/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    in_files = [r for f in (mf.PROMETHEUS_YML.parent / "rules").glob("*.yml")
                for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]
    assert len(rules) == len(in_files) > 0
    assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []
    assert [r["name"] for r in rules if r["type"] == "alerting" and r["state"] == "firing"] == []


def test_the_gpu_and_swap_panels_show_the_numbers_the_components_export(observed) -> None:
    gw, svc, prom = observed

    def value(promql: str) -> float:
        _, body = mf.query(prom.url, promql)
        (sample,) = body["data"]["result"]
        return float(sample["value"][1])

    # The fake NVML's one GPU (12 GiB, 3 GiB used), under the coordinator's device name.
    assert value('device:roundhouse_gpu_memory_used_bytes:sum{device="cuda:0"}') == 3 * 2**30
    assert value("roundhouse_gpu_memory_total_bytes") == 12 * 2**30
    assert value("max(roundhouse_gpu_nvml_available)") == 1
    # The CPU ledger's budget as configured, and the swap that evicted tiny-blip counted as one.
    assert value('sum(roundhouse_coordinator_budget_bytes{device="cpu"})') == BUDGET_MB * 2**20
    assert value('sum(roundhouse_coordinator_evictions_total{reason="swap"})') == 1
    assert value('sum(roundhouse_coordinator_release_unverified_total)') == 0
    # Each model's state as the state timeline draws it: tiny-blip ready (2), the others unloaded (0).
    _, body = mf.query(prom.url, "model:roundhouse_model_state:code")
    states = {r["metric"]["model"]: r["value"][1] for r in body["data"]["result"]}
    assert states == {"tiny-blip": "2", "tiny-blip2": "0", "tiny-qwen25vl": "0"}

    # The spares-and-parking row: every worker the service started is counted by its source, as the
    # service counts it (a worker per swap: the swap's unload ended the family's last model's worker),
    # and nothing is parked (parking is off by default).
    exported = {line.split('source="')[1].split('"')[0]: float(line.split()[-1])
                for line in httpx.get(svc.url + "/metrics").text.splitlines()
                if line.startswith("roundhouse_model_worker_starts_total{")}
    assert sum(exported.values()) >= 3 and set(exported) <= {"spare", "cold"}
    assert value("sum(roundhouse_model_worker_starts_total)") == sum(exported.values())
    assert value("sum(roundhouse_model_parked_models)") == 0
