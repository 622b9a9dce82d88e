"""A fake NVML shared by the processes of a rehearsal, where host memory plays the GPU's memory.

The GPU check (``tools/gpu_check``) rehearses on a CPU: the gateway, caption-svc, its worker and the
check itself each import ``pynvml``, and find ``tests/doubles/pynvml_shim/pynvml.py`` first on their
``PYTHONPATH``. The shim builds a ``HostBackedNvml`` from the JSON file named by
``ROUNDHOUSE_FAKE_NVML``, so every process sees the same devices. On the GPU marked ``tenants``, the
model workers of this rehearsal are the "CUDA processes": each one's resident set is its device
memory (``nvmlDeviceGetComputeRunningProcesses``), and the device's used bytes are the GPU's base
plus theirs. A worker is this rehearsal's when its command line runs ``modelhost.worker`` and its
environment carries the same ``ROUNDHOUSE_FAKE_NVML`` (other test runs on the machine do not count).
The model runners of the LLM server stand-ins (``tests.doubles.llm_runner``, Ollama's and llama-swap's
per-model processes) are CUDA processes on that GPU in the same way: not Roundhouse's, but on its card.
So a load really raises the used bytes, and an unload or a worker's end really gives them back,
on the card the rehearsal put the models on.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil

from tests.doubles.fake_nvml import GiB, FakeGpu, FakeNvml

ENV = "ROUNDHOUSE_FAKE_NVML"
CUDA_PROCESSES = ("modelhost.worker", "tests.doubles.llm_runner")  # what runs on the tenants' GPU
TENANT_SCAN_S = 0.25  # how long a scan of the process table is reused (the worker samples every 10 ms)


class HostBackedNvml(FakeNvml):
    def __init__(self, gpus: list[FakeGpu], tenant_gpu: int | None, base_used: dict[int, int], marker: str,
                 **kwargs: object) -> None:
        super().__init__(gpus, **kwargs)
        self._tenant_gpu = tenant_gpu
        self._base = base_used
        self._marker = marker
        self._pids: list[int] = []
        self._scanned = float("-inf")

    def _tenants(self) -> dict[int, int]:
        now = time.monotonic()
        if now - self._scanned > TENANT_SCAN_S:
            self._scanned = now
            self._pids = [p.pid for p in psutil.process_iter(["cmdline"])
                          if any(m in " ".join(p.info["cmdline"] or []) for m in CUDA_PROCESSES) and self._ours(p)]
        rss = {}
        for pid in self._pids:
            try:
                rss[pid] = psutil.Process(pid).memory_info().rss
            except psutil.Error:
                pass
        return rss

    def _ours(self, proc: psutil.Process) -> bool:
        try:
            return proc.environ().get(ENV) == self._marker
        except psutil.Error:
            return False

    def _refresh(self, gpu: FakeGpu) -> None:
        index = self.gpus.index(gpu)
        if index == self._tenant_gpu:
            gpu.processes = self._tenants()
            gpu.used_bytes = self._base[index] + sum(gpu.processes.values())

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu):  # noqa: N802, ANN201
        self._refresh(gpu)
        return super().nvmlDeviceGetMemoryInfo(gpu)

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu):  # noqa: N802, ANN201
        self._refresh(gpu)
        return super().nvmlDeviceGetComputeRunningProcesses(gpu)


def seeds_box_spec() -> dict:
    """The seeds' box: NVML lists the Quadro P2000 first; CUDA (fastest first) calls the RTX 3090
    cuda:0, and the rehearsal's models live there."""
    return {
        "driver_version": "580.95.05", "cuda_driver_version": 13000,
        "gpus": [
            {"uuid": "GPU-p2000000-0000-0000-0000-000000000000", "name": "Quadro P2000", "total_bytes": 5 * GiB,
             "base_used_bytes": 300 * 2**20, "pci_bus_id": "00000000:01:00.0", "compute_capability": [6, 1],
             "cores": 1024},
            {"uuid": "GPU-30900000-0000-0000-0000-000000000000", "name": "NVIDIA GeForce RTX 3090 (rehearsal)",
             "total_bytes": 24 * GiB, "base_used_bytes": 500 * 2**20, "pci_bus_id": "00000000:41:00.0",
             "compute_capability": [8, 6], "cores": 10496, "tenants": True},
        ],
    }


def write_spec(path: Path, spec: dict | None = None) -> dict[str, str]:
    """Write ``spec`` (default: the seeds' box) and return the environment that points processes at it."""
    path.write_text(json.dumps(spec or seeds_box_spec(), indent=1))
    shim = Path(__file__).resolve().parent / "pynvml_shim"
    root = Path(__file__).resolve().parents[2]
    pythonpath = os.pathsep.join([str(shim), str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return {ENV: str(path), "PYTHONPATH": pythonpath}


def from_env() -> HostBackedNvml:
    marker = os.environ[ENV]
    spec = json.loads(Path(marker).read_text())
    gpus, base, tenant = [], {}, None
    for i, g in enumerate(spec["gpus"]):
        gpus.append(FakeGpu(g["uuid"], g["name"], int(g["total_bytes"]), int(g["base_used_bytes"]),
                            pci_bus_id=g["pci_bus_id"], compute_capability=tuple(g["compute_capability"]),
                            cores=g.get("cores")))
        base[i] = int(g["base_used_bytes"])
        if g.get("tenants"):
            tenant = i
    return HostBackedNvml(gpus, tenant, base, marker, driver_version=spec["driver_version"],
                          cuda_driver_version=int(spec["cuda_driver_version"]))
