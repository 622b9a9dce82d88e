"""The parked tier for real: the gateway and the caption service as processes, the tiny caption models, a CPU budget
that holds one worker with one model measured alone (the first model in a worker carries the imported framework),
and the service's park setting on. Evicted by pressure, a model is parked in its live worker (visible in
/admin/models, its host memory counted, no device memory held); its next request un-parks it, faster than its cold
load, and it answers the same caption."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests import procs
from tests.conftest import image_bytes

pytestmark = pytest.mark.proc

BUDGET_MB = 1100  # one worker with torch and a model (about 750 MiB) fits; a second model's estimate (600) does not


def caption(url: str, model: str) -> tuple[dict, float]:
    t0 = time.monotonic()
    r = httpx.post(url + "/v1/images/captions", files={"file": ("a.png", image_bytes("PNG"))},
                   data={"model": model}, timeout=180)
    assert r.status_code == 200, r.text
    return r.json(), time.monotonic() - t0


@pytest.fixture()
def parking_stack(tiny_catalog: Path, logdir: Path, tmp_path: Path):
    cat = procs.standalone_catalog(tiny_catalog, tmp_path / "catalog", ids=("tiny-blip", "tiny-blip2"))
    svc = procs.start_caption_svc(cat, logdir, park="true", spare_worker="false")
    gw = procs.start_gateway(cat, {"caption": svc.url}, logdir, name="gateway-parking",
                             memory_budget_mb=f'{{"cpu": {BUDGET_MB}}}', data_dir=str(tmp_path / "data"))
    yield gw, svc
    gw.stop()
    svc.stop()


def admin_models(gw: procs.Proc) -> dict[str, dict]:
    r = httpx.get(gw.url + "/admin/models", timeout=30)
    assert r.status_code == 200, r.text
    return {m["id"]: m for m in r.json()["data"]}


def service_models(svc: procs.Proc) -> dict:
    r = httpx.get(svc.url + "/v1/models", headers=procs.INTERNAL_HEADERS, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_an_evicted_model_is_parked_and_its_next_request_unparks_it(parking_stack) -> None:
    gw, svc = parking_stack
    first, cold_s = caption(gw.url, "tiny-blip")
    worker = service_models(svc)["worker_pid"]
    assert worker is not None

    caption(gw.url, "tiny-blip2")  # does not fit beside tiny-blip's measured footprint: tiny-blip is evicted, parked
    rows = admin_models(gw)
    assert rows["tiny-blip"]["state"] == "parked" and rows["tiny-blip"]["ledger_state"] == "parked"
    assert rows["tiny-blip"]["parkable"] and rows["tiny-blip"]["host_memory_bytes"] > 0  # the admin view says so
    listing = service_models(svc)
    assert listing["worker_pid"] == worker  # the worker lives on, holding the parked weights
    blip = next(m for m in listing["data"] if m["id"] == "tiny-blip")
    assert blip["parkable"] and blip["host_memory_bytes"] > 0 and blip["memory_bytes"] == 0  # none on the device
    metrics = httpx.get(svc.url + "/metrics", timeout=30).text
    assert 'roundhouse_model_parked_models{family="caption"} 1.0' in metrics

    again, unpark_wall_s = caption(gw.url, "tiny-blip")
    assert again["caption"] == first["caption"]  # the same weights, copied back
    listing = service_models(svc)
    blip = next(m for m in listing["data"] if m["id"] == "tiny-blip")
    assert blip["state"] == "ready" and blip["unpark_s"] is not None
    assert listing["worker_pid"] == worker
    cold_load_s = blip["load_s"] + blip["warmup_s"]  # its first load, into a worker started for it
    assert blip["unpark_s"] < cold_load_s, (blip["unpark_s"], cold_load_s)
    assert unpark_wall_s < cold_s, (unpark_wall_s, cold_s)
    assert admin_models(gw)["tiny-blip"]["unpark_s"] == blip["unpark_s"]


def test_a_service_left_with_only_parked_models_holds_no_device_memory_for_them(parking_stack) -> None:
    gw, svc = parking_stack
    caption(gw.url, "tiny-blip")
    caption(gw.url, "tiny-blip2")  # tiny-blip parked
    r = httpx.post(gw.url + "/admin/models/tiny-blip2/unload", timeout=60)
    assert r.status_code == 200, r.text
    listing = service_models(svc)
    states = {m["id"]: m["state"] for m in listing["data"]}
    assert states == {"tiny-blip": "parked", "tiny-blip2": "unloaded"}
    blip = next(m for m in listing["data"] if m["id"] == "tiny-blip")
    assert blip["memory_bytes"] == 0 and blip["host_memory_bytes"] > 0
    cpu = httpx.get(gw.url + "/admin/gpu", timeout=30).json()["devices"]["cpu"]
    assert cpu["resident"] == {} and cpu["used_bytes"] == 0  # the ledger charges a parked model nothing on the host
