"""A family service whose models stand in for GPU models on the fake NVML a rehearsal's processes share
(``fake_nvml_host.py``): the real model host kit (``modelhost.app``: runtime, worker process, meter,
errors), with one backend that stands in for the GPU.

``DeviceHog`` holds ``options.weights_bytes`` from ``load()`` until ``close()`` — host memory, every
page written, so its worker's resident set (which the fake NVML counts as the worker's device
memory) really grows — and its load runs out of device memory, as CUDA would, when the fake device
has less free than that: it raises torch's pre-1.13 ``RuntimeError("CUDA out of memory. ...")``.
Nothing else about it is fake: the worker measures it, the service answers its load, and an
out-of-memory load is told apart by ``modelhost.oom`` like any framework's.

    ROUNDHOUSE_FAKE_NVML=... PYTHONPATH=tests/doubles/pynvml_shim:. MODELHOST_CATALOG=catalog.yaml \\
        MODELHOST_PORT=8199 python -m tests.doubles.device_hog
"""

from __future__ import annotations

from modelhost.app import Family, create_host_app, serve
from modelhost.backend import Backend
from modelhost.catalog import load_catalog
from modelhost.settings import HostSettings
from tests.doubles.llm_runner import hold

FAMILY = Family(name="hog", service="hog-svc", backends={"hog": "tests.doubles.device_hog:DeviceHog"})


class DeviceHog(Backend):
    def load(self) -> str:
        import pynvml  # the fake NVML (pynvml_shim): the device the rehearsal shares

        need = int(self.spec.options["weights_bytes"])
        pynvml.nvmlInit()
        gpu = pynvml.nvmlDeviceGetHandleByIndex(int(self.spec.options.get("nvml_index", 0)))
        free = pynvml.nvmlDeviceGetMemoryInfo(gpu).free
        if free < need:
            raise RuntimeError(f"CUDA out of memory. Tried to allocate {need / 2**20:.2f} MiB (GPU 0; "
                               f"{free / 2**20:.2f} MiB free)")
        self._weights = hold(need)
        return "cuda:0"

    def warmup(self) -> None:
        pass

    def infer(self, items: list) -> list:
        return items

    def close(self) -> None:
        self._weights = None


def main() -> None:
    settings = HostSettings()
    serve(FAMILY, settings, create_host_app(FAMILY, settings, load_catalog(settings.catalog)))


if __name__ == "__main__":
    main()
