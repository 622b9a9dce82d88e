"""The swap coordinator for real: the gateway and the caption service as processes, with a CPU
budget that holds one tiny caption model at a time (the first model in a worker carries the
imported framework, about 700 MiB), so interleaved requests force real swaps."""

from __future__ import annotations

import concurrent.futures
import signal
from pathlib import Path

import httpx
import pytest
import yaml

from tests import procs
from tests.conftest import image_bytes

pytestmark = pytest.mark.proc

BUDGET_MB = 1100  # one worker with torch + one tiny model fits; two workers' worth does not


def caption(url: str, model: str) -> httpx.Response:
    return httpx.post(url + "/v1/images/captions", files={"file": ("a.png", image_bytes("PNG"))},
                      data={"model": model}, timeout=180)


@pytest.fixture()
def tight_stack(tiny_catalog: Path, logdir: Path, tmp_path: Path):
    catalog = procs.standalone_catalog(tiny_catalog, tmp_path / "catalog")
    svc = procs.start_caption_svc(catalog, logdir)
    gw = procs.start_gateway(catalog, {"caption": svc.url}, logdir, name="gateway-tight",
                             memory_budget_mb=f'{{"cpu": {BUDGET_MB}}}', reconcile_interval_s="1",
                             data_dir=str(tmp_path / "data"))
    yield gw, svc
    gw.stop()
    svc.stop()


def test_interleaved_requests_to_two_models_all_succeed_within_the_budget(tight_stack) -> None:
    gw, svc = tight_stack
    models = ["tiny-blip", "tiny-qwen25vl"]
    # Measure both first, so the ledger knows their true footprints.
    for m in models:
        assert caption(gw.url, m).status_code == 200
    order = [models[i % 2] for i in range(12)] + [models[0]] * 4 + [models[1]] * 4
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda m: caption(gw.url, m), order))
    assert [r.status_code for r in responses] == [200] * len(order), [r.text for r in responses if r.status_code != 200]
    assert [r.json()["model"] for r in responses] == order

    view = httpx.get(gw.url + "/admin/gpu").json()
    cpu = view["devices"]["cpu"]
    assert cpu["used_bytes"] <= cpu["budget_bytes"] == BUDGET_MB * 2**20
    assert cpu["footprints"]["tiny-blip"]["measured"] and cpu["footprints"]["tiny-qwen25vl"]["measured"]
    assert len(cpu["resident"]) <= 1  # one at a time: the budget holds one worker
    metrics = httpx.get(gw.url + "/metrics").text
    swaps = sum(float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith("roundhouse_coordinator_swaps_total{"))
    assert 2 <= swaps < len(order)  # it swapped, but not on every model change
    assert 'roundhouse_coordinator_release_unverified_total' not in metrics or \
        all(line.endswith(" 0.0") for line in metrics.splitlines() if line.startswith("roundhouse_coordinator_release_unverified_total{"))
    admin = httpx.get(gw.url + "/admin/models").json()
    assert {m["ledger_state"] for m in admin["data"]} <= {"ready", "unloaded"}


def test_footprints_are_remembered_across_a_gateway_restart(tiny_catalog: Path, logdir: Path, tmp_path: Path) -> None:
    svc = procs.start_caption_svc(tiny_catalog, logdir)
    data = tmp_path / "data"
    try:
        gw = procs.start_gateway(tiny_catalog, {"caption": svc.url}, logdir, name="gateway-mem1", data_dir=str(data))
        try:
            assert caption(gw.url, "tiny-blip2").status_code == 200
            measured = httpx.get(gw.url + "/admin/gpu").json()["devices"]["cpu"]["footprints"]["tiny-blip2"]
            assert measured["measured"]
        finally:
            gw.stop()
        assert (data / "footprints.json").exists()
        gw = procs.start_gateway(tiny_catalog, {"caption": svc.url}, logdir, name="gateway-mem2", data_dir=str(data))
        try:
            again = httpx.get(gw.url + "/admin/gpu").json()["devices"]["cpu"]
            assert again["footprints"]["tiny-blip2"] == measured  # known before any load
            assert "tiny-blip2" in again["resident"]  # reconciled from the service on start
        finally:
            gw.stop()
    finally:
        svc.stop()


def test_a_service_killed_mid_swap_is_reconciled_and_the_next_request_succeeds(tiny_catalog: Path, logdir: Path, tmp_path: Path) -> None:
    catalog = procs.standalone_catalog(tiny_catalog, tmp_path / "catalog")
    svc = procs.start_caption_svc(catalog, logdir)
    port = svc.port
    gw = procs.start_gateway(catalog, {"caption": svc.url}, logdir, name="gateway-kill",
                             memory_budget_mb=f'{{"cpu": {BUDGET_MB}}}', data_dir=str(tmp_path / "data"),
                             reconcile_interval_s="1")
    try:
        assert caption(gw.url, "tiny-blip").status_code == 200
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(caption, gw.url, "tiny-qwen25vl")  # forces a swap: unload blip, load qwen
            # Kill the service (and its worker) while the swap is under way.
            procs.wait_until(lambda: httpx.get(gw.url + "/admin/gpu").json()["devices"]["cpu"]["swap"] is not None, 30)
            svc.stop(sig=signal.SIGKILL)
            r = pending.result(timeout=120)
        assert r.status_code in (500, 502, 503), r.text  # answered, not hung
        # The ledger no longer claims anything is resident.
        procs.wait_until(lambda: not httpx.get(gw.url + "/admin/gpu").json()["devices"]["cpu"]["resident"], 30)
        svc = procs.start_caption_svc(catalog, logdir, port=str(port))
        r = caption(gw.url, "tiny-qwen25vl")
        assert r.status_code == 200, r.text
        cpu = httpx.get(gw.url + "/admin/gpu").json()["devices"]["cpu"]
        assert list(cpu["resident"]) == ["tiny-qwen25vl"] and cpu["used_bytes"] <= cpu["budget_bytes"]
    finally:
        gw.stop()
        svc.stop()


def test_two_families_share_one_budget_one_at_a_time(tmp_path: Path, logdir: Path) -> None:
    """Caption and speech-to-text, each a real service with its own worker, under a CPU budget that
    holds one of the two workers: interleaved requests to both all succeed, the ledger never passes
    the budget, and the swaps are verified releases (no unverified ones)."""
    from tests.asr_fixtures import build_tiny_asr_models, flite_wav

    models_dir = tmp_path / "models"
    procs.build_tiny_models(models_dir)
    catalog = build_tiny_asr_models(models_dir)
    raw = yaml.safe_load(catalog.read_text())
    for m in raw["models"]:
        m["memory_estimate_mb"] = 600  # until measured: never two workers at once
    catalog.write_text(yaml.safe_dump(raw))
    asr_model = next(m["id"] for m in raw["models"] if m["family"] == "asr" and m["backend"] == "whisper")

    cap = procs.start_caption_svc(catalog, logdir)
    asr = procs.start_asr_svc(catalog, logdir)
    gw = procs.start_gateway(catalog, {"caption": cap.url, "asr": asr.url}, logdir, name="gateway-two-families",
                             memory_budget_mb='{"cpu": 1000}', data_dir=str(tmp_path / "data"))
    speech = flite_wav("one two three four five")

    def transcribe() -> httpx.Response:
        return httpx.post(gw.url + "/v1/audio/transcriptions", files={"file": ("s.wav", speech, "audio/wav")},
                          data={"model": asr_model}, timeout=180)

    try:
        order = ["caption", "asr", "caption", "caption", "asr", "caption", "asr", "asr"]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(lambda kind: caption(gw.url, "tiny-blip") if kind == "caption" else transcribe(), order))
        assert [r.status_code for r in responses] == [200] * len(order), [r.text for r in responses if r.status_code != 200]
        cpu = httpx.get(gw.url + "/admin/gpu").json()["devices"]["cpu"]
        assert cpu["used_bytes"] <= cpu["budget_bytes"]
        assert len(cpu["resident"]) == 1
        assert cpu["footprints"]["tiny-blip"]["measured"] and cpu["footprints"][asr_model]["measured"]
        assert cpu["swaps"] >= 2
        assert httpx.get(gw.url + "/admin/gpu").json()["unverified_releases"] == 0
        # Each service really let go: at most one worker is alive.
        services = httpx.get(gw.url + "/admin/models").json()["services"]
        assert sum(1 for s in services.values() if s.get("worker_pid")) <= 1
    finally:
        gw.stop()
        cap.stop()
        asr.stop()


def test_admin_unload_drains_the_requests_in_flight_then_answers_with_the_verified_release(
        tiny_catalog: Path, logdir: Path, tmp_path: Path) -> None:
    """POST /admin/models/{id}/unload goes through the coordinator: with requests in flight it is 409
    without drain; with drain the model takes no new grants, its requests in flight all finish, and
    the answer comes once the service released the memory, which the ledger then no longer charges."""
    model = "tiny-qwen25vl"  # 512 new tokens take about a second: long enough to be seen in flight
    svc = procs.start_caption_svc(tiny_catalog, logdir)
    gw = procs.start_gateway(tiny_catalog, {"caption": svc.url}, logdir, name="gateway-admin-unload",
                             data_dir=str(tmp_path / "data"))

    def cpu() -> dict:
        return httpx.get(gw.url + "/admin/gpu").json()["devices"]["cpu"]

    def slow_caption() -> httpx.Response:
        return httpx.post(gw.url + "/v1/images/captions", files={"file": ("a.png", image_bytes("PNG"))},
                          data={"model": model, "max_new_tokens": "512"}, timeout=180)

    def unload(drain: bool) -> httpx.Response:
        return httpx.post(f"{gw.url}/admin/models/{model}/unload", params={"drain": str(drain).lower()}, timeout=180)

    try:
        assert caption(gw.url, model).status_code == 200  # loaded, measured, idle
        before = cpu()
        charged = before["resident"][model]["charged_bytes"]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            in_flight = [pool.submit(slow_caption) for _ in range(3)]
            procs.wait_until(lambda: cpu()["resident"][model]["in_flight"] == 3, 60, interval_s=0.01)
            refused = unload(drain=False)
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_in_use", refused.text
            answer = pool.submit(unload, True)
            procs.wait_until(lambda: cpu()["resident"][model]["draining"], 30, interval_s=0.01)
            assert not answer.done()  # it waits for the requests in flight
            assert [f.result(timeout=180).status_code for f in in_flight] == [200] * 3
            r = answer.result(timeout=180)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == model and body["state"] == "unloaded" and body["was_resident"] is True
        assert body["verified"] is True and body["freed_bytes"] > 0 and body["worker_stopped"] is True
        after = cpu()
        assert model not in after["resident"] and after["unloading"] == {}
        assert after["used_bytes"] == before["used_bytes"] - charged
        # Not resident any more: answered at once, saying so.
        again = unload(drain=False).json()
        assert again["was_resident"] is False and again["freed_bytes"] == 0
    finally:
        gw.stop()
        svc.stop()
