"""Memory not ours, and a load that runs out of device memory, for real: the gateway and a family service
(``tests/doubles/device_hog.py``: the real model host kit, whose models hold host memory that the fake
NVML counts as their worker's device memory) as processes on loopback, sharing one fake 1 GiB GPU
(``fake_nvml_host.py``). Another process on the card — ``tests.doubles.llm_runner``, which the fake
NVML counts as a CUDA process, started by the test and named in no catalog — is memory not ours.

- Memory not ours grows into the reserve the gateway keeps free on the card (a real card cannot be
  fuller than full, so that is how "ours no longer fits" shows): the gateway's periodic meter
  reading sees it, evicts its idle model
  (``GET /admin/gpu``: foreign_bytes, room_bytes; ``GET /admin/models``), refuses a model that no
  longer fits with a transient 503, and loads it again once the other process is gone.
- A load runs out of device memory (the ledger admitted a model whose estimate is far below what its
  load takes): the gateway evicts its idle model, retries once, and the load succeeds; with nothing
  to evict, 503 ``insufficient_memory`` naming what holds the device, and the model stays loadable.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests import procs
from tests.doubles import fake_nvml_host

pytestmark = pytest.mark.proc

MiB = 2**20
TOTAL = 1024 * MiB  # the fake card
RESERVE = 256 * MiB  # kept free on the card beside the budget (GATEWAY_GPU_RESERVE_MB)
HOG = 500 * MiB  # each model's weights: one fits on the card, two do not
TIMEOUT_S = 60


def card() -> dict:
    return {"driver_version": "580.95.05", "cuda_driver_version": 13000,
            "gpus": [{"uuid": "GPU-f0000000-0000-0000-0000-000000000000", "name": "NVIDIA GeForce RTX 3050 (rehearsal)",
                      "total_bytes": TOTAL, "base_used_bytes": 16 * MiB, "pci_bus_id": "00000000:01:00.0",
                      "compute_capability": [8, 6], "cores": 2560, "tenants": True}]}


def hog(model_id: str, *, estimate_mb: int, pin: bool = False) -> dict:
    return {"id": model_id, "family": "hog", "backend": "hog", "source": "none", "device": "cuda:0", "pin": pin,
            "memory_estimate_mb": estimate_mb, "options": {"weights_bytes": HOG}}


class Stack:
    def __init__(self, tmp_path: Path, logdir: Path, models: list[dict]) -> None:
        self.env = fake_nvml_host.write_spec(tmp_path / "fake-nvml.json", card())
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text(json.dumps({"models": models}))  # JSON is YAML
        self.procs: list[procs.Proc] = []
        self.others: list[subprocess.Popen] = []
        try:
            with pytest.MonkeyPatch.context() as mp:  # every process reads the same fake card
                for k, v in self.env.items():
                    mp.setenv(k, v)
                port = procs.free_port()
                self.hog = procs.start("hog-svc", [str(procs.GATEWAY_PY), "-m", "tests.doubles.device_hog"],
                                       {"MODELHOST_CATALOG": str(catalog), "MODELHOST_PORT": str(port),
                                        "MODELHOST_SPARE_WORKER": "false", "MODELHOST_CACHE_DIR": str(tmp_path / "cache")},
                                       port, logdir)
                self.procs.append(self.hog)
                self.gateway = procs.start_gateway(
                    catalog, {"hog": self.hog.url}, logdir, name="gateway-foreign",
                    memory_budget_mb=json.dumps({"cuda:0": 1000}), gpu_reserve_mb=str(RESERVE // MiB), meter_interval_s="0.2",
                    idle_grace_s="0", reconcile_interval_s="1", request_timeout_s="30",
                    data_dir=str(tmp_path / "gateway-data"))
                self.procs.append(self.gateway)
        except Exception:
            self.stop()
            raise

    def other_process(self, nbytes: int) -> subprocess.Popen:
        """A process on the card that is not ours (as an LLM server no catalog names would be)."""
        p = subprocess.Popen([str(procs.GATEWAY_PY), "-m", "tests.doubles.llm_runner", "--bytes", str(nbytes), "--model", "game"],
                             env={**os.environ, **self.env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             cwd=procs.ROOT)
        assert p.stdout.readline().strip() == b"ready"
        self.others.append(p)
        return p

    def gpu(self) -> dict:
        return httpx.get(self.gateway.url + "/admin/gpu", timeout=10).json()["devices"]["cuda:0"]

    def state(self, model: str) -> str:
        rows = httpx.get(self.gateway.url + "/admin/models", timeout=10).json()["data"]
        return next(r for r in rows if r["id"] == model)["ledger_state"]

    def load(self, model: str) -> httpx.Response:
        return httpx.post(f"{self.gateway.url}/admin/models/{model}/load", timeout=TIMEOUT_S)

    def stop(self) -> None:
        for p in self.others:
            if p.poll() is None:
                p.stdin.close()
                p.wait(10)
        for p in reversed(self.procs):
            p.stop()


@pytest.fixture()
def stack(request: pytest.FixtureRequest, tmp_path: Path, logdir: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, logdir, request.param)
    yield s
    s.stop()


@pytest.mark.parametrize("stack", [[hog("game-victim", estimate_mb=HOG // MiB)]], indirect=True)
def test_memory_not_ours_growing_evicts_the_idle_model_and_a_model_that_no_longer_fits_waits(stack: Stack) -> None:
    assert stack.load("game-victim").status_code == 200
    gpu = stack.gpu()
    assert gpu["total_bytes"] == TOTAL and "game-victim" in gpu["resident"]
    charged = gpu["resident"]["game-victim"]["charged_bytes"]
    before = gpu["foreign_bytes"]  # the card's base, and what the worker holds beyond its model's charge
    # A process not ours takes what is left of the room and a quarter of the model's charge more: it eats
    # into the reserve (the card is not full: it could not be), so the idle model steps back.
    other = stack.other_process(TOTAL - RESERVE - before - charged + charged // 4)
    # Wait for the release to be over, not only for the model to leave the residents (it is then unloading).
    procs.wait_until(lambda: stack.state("game-victim") == "unloaded", TIMEOUT_S)
    gpu = stack.gpu()
    assert "game-victim" not in gpu["resident"] and "game-victim" not in gpu["unloading"]
    assert gpu["foreign_bytes"] > before and gpu["room_bytes"] < charged
    metrics = httpx.get(stack.gateway.url + "/metrics", timeout=10).text
    assert 'roundhouse_coordinator_evictions_total{model="game-victim",reason="foreign"} 1.0' in metrics
    assert 'roundhouse_coordinator_foreign_bytes{device="cuda:0"}' in metrics

    refused = stack.load("game-victim")  # the budget holds it, the card does not: transient, never a hang
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_not_ready"
    assert refused.headers["retry-after"] and "not ours" in refused.json()["error"]["message"]

    other.stdin.close()  # the other process ends
    other.wait(10)
    procs.wait_until(lambda: stack.gpu()["room_bytes"] >= charged, TIMEOUT_S)
    assert stack.load("game-victim").status_code == 200


@pytest.mark.parametrize("stack", [[hog("first", estimate_mb=HOG // MiB), hog("second", estimate_mb=100)]], indirect=True)
def test_a_load_out_of_memory_evicts_the_idle_model_and_is_retried_once(stack: Stack) -> None:
    assert stack.load("first").status_code == 200
    # "second" is admitted by its 100 MiB estimate beside "first", but its load takes 500 MiB: the card
    # has no room, the service answers out_of_memory, the gateway evicts "first" and loads again.
    r = stack.load("second")
    assert r.status_code == 200, r.text
    gpu = stack.gpu()
    assert set(gpu["resident"]) == {"second"} and gpu["resident"]["second"]["charged_bytes"] >= HOG * 0.9
    metrics = httpx.get(stack.gateway.url + "/metrics", timeout=10).text
    assert 'roundhouse_gateway_model_loads_total{model="second",outcome="failed"} 1.0' in metrics
    assert 'roundhouse_coordinator_evictions_total{model="first",reason="swap"} 1.0' in metrics


@pytest.mark.parametrize("stack", [[hog("pinned", estimate_mb=HOG // MiB, pin=True), hog("second", estimate_mb=100)]],
                         indirect=True)
def test_a_load_out_of_memory_with_nothing_to_evict_is_503_insufficient_memory_naming_the_holders(stack: Stack) -> None:
    assert stack.load("pinned").status_code == 200
    r = stack.load("second")
    assert r.status_code == 503 and r.json()["error"]["code"] == "insufficient_memory" and r.headers["retry-after"]
    message = r.json()["error"]["message"]
    assert "ran out of cuda:0 memory" in message and "pinned" in message and "not ours" in message
    assert stack.state("second") == "unloaded" and "pinned" in stack.gpu()["resident"]  # the service stays up
    httpx.post(f"{stack.gateway.url}/admin/models/pinned/unload", timeout=TIMEOUT_S).raise_for_status()
    assert stack.load("second").status_code == 200  # not failed for good
