"""The NVML meter and the cuda:N -> NVML mapping against the fake NVML and the fake libcuda (the
hardware boundary); the meter, the mapping and the footprint arithmetic are real."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelhost.cuda import (
    NoSuchGpu,
    NvmlGpu,
    cuda_pci_bus_ids,
    nvml_device_for_cuda,
    nvml_gpus,
    pci_key,
)
from modelhost.meter import (
    Footprint,
    HostMeter,
    MemoryReading,
    MeterError,
    NvmlMeter,
    load_footprint,
    open_meter,
    released_bytes,
)
from tests.doubles.fake_cuda import CUDA_ERROR_NO_DEVICE, FakeLibcuda, hide_libcuda
from tests.doubles.fake_nvml import (
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    FakeGpu,
    FakeNvml,
    one_gpu,
    seeds_box,
)

pytestmark = pytest.mark.unit

GiB, MiB = 2**30, 2**20
P2000, RTX3090 = 0, 1  # NVML's indices on the seeds' box (PCI order)
CUDA_ORDER_FASTEST = ["0000:41:00.0", "0000:01:00.0"]  # what libcuda answers there by default


@pytest.fixture(autouse=True)
def no_libcuda(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_libcuda(monkeypatch)  # the same answers on a GPU machine: libcuda comes only as the fake


@pytest.fixture
def box(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    nvml = seeds_box()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return nvml


# --- which NVML device is cuda:N -----------------------------------------------------------------


def gpus(nvml: FakeNvml) -> list[NvmlGpu]:
    nvml.nvmlInit()
    return nvml_gpus(nvml)


def test_nvml_lists_each_gpu_with_its_pci_bus_id_compute_capability_and_cores() -> None:
    listed = gpus(seeds_box())
    assert [(g.index, g.pci, g.compute_capability, g.cores) for g in listed] == [
        (0, (0, 1, 0, 0), (6, 1), 1024), (1, (0, 0x41, 0, 0), (8, 6), 10496)]
    nvml = one_gpu()
    assert gpus(nvml)[0].cores == 0  # nvmlDeviceGetNumGpuCores not supported: ranked without it


def test_cuda_and_nvml_spellings_of_a_pci_bus_id_compare_equal() -> None:
    assert pci_key("0000:41:00.0") == pci_key("00000000:41:00.0") == pci_key(b"00000000:41:00.0\x00")


def test_libcuda_answers_exactly_which_card_is_cuda_0() -> None:
    listed = gpus(seeds_box())
    r0 = nvml_device_for_cuda(0, listed, cuda_bus_ids=CUDA_ORDER_FASTEST, environ={})
    r1 = nvml_device_for_cuda(1, listed, cuda_bus_ids=CUDA_ORDER_FASTEST, environ={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert (r0.nvml_index, r0.how) == (RTX3090, "libcuda")
    assert r1.nvml_index == P2000  # libcuda's answer wins over what the environment suggests
    with pytest.raises(NoSuchGpu, match="CUDA sees 2 GPU"):
        nvml_device_for_cuda(2, listed, cuda_bus_ids=CUDA_ORDER_FASTEST, environ={})


def test_without_libcuda_pci_bus_id_order_is_nvmls_order() -> None:
    listed = gpus(seeds_box())
    r = nvml_device_for_cuda(0, listed, cuda_bus_ids=None, environ={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert (r.nvml_index, r.how) == (P2000, "pci order")


def test_without_libcuda_fastest_first_is_guessed_newest_architecture_first_and_says_so() -> None:
    listed = gpus(seeds_box())
    r0 = nvml_device_for_cuda(0, listed, cuda_bus_ids=None, environ={})
    r1 = nvml_device_for_cuda(1, listed, cuda_bus_ids=None, environ={"CUDA_DEVICE_ORDER": "FASTEST_FIRST"})
    assert (r0.nvml_index, r0.how) == (RTX3090, "guess")
    assert r1.nvml_index == P2000


@pytest.mark.parametrize("visible, order, expect", [
    ("1", "PCI_BUS_ID", RTX3090),          # an index into CUDA's order
    ("1", "FASTEST_FIRST", P2000),
    ("GPU-p2000", "FASTEST_FIRST", P2000),  # a unique UUID prefix
    ("GPU-30900000-0000-0000-0000-000000000000,0", "PCI_BUS_ID", RTX3090),
])
def test_cuda_visible_devices_narrows_and_reorders_as_cuda_does(visible: str, order: str, expect: int) -> None:
    r = nvml_device_for_cuda(0, gpus(seeds_box()), cuda_bus_ids=None,
                             environ={"CUDA_VISIBLE_DEVICES": visible, "CUDA_DEVICE_ORDER": order})
    assert r.nvml_index == expect


@pytest.mark.parametrize("visible", ["", "7", "-1", "GPU-nothing", "0,0"])
def test_a_cuda_device_that_is_not_visible_is_refused_by_name(visible: str) -> None:
    ordinal = 1 if visible == "0,0" else 0  # a repeated entry ends the list, as in CUDA
    with pytest.raises(NoSuchGpu, match=f"cuda:{ordinal} does not exist"):
        nvml_device_for_cuda(ordinal, gpus(seeds_box()), cuda_bus_ids=None, environ={"CUDA_VISIBLE_DEVICES": visible})


def test_one_gpu_needs_no_guess() -> None:
    r = nvml_device_for_cuda(0, gpus(one_gpu()), cuda_bus_ids=None, environ={})
    assert (r.nvml_index, r.how) == (0, "only gpu")


def test_libcuda_is_asked_through_its_c_calls() -> None:
    driver = FakeLibcuda(CUDA_ORDER_FASTEST)
    assert cuda_pci_bus_ids(driver) == CUDA_ORDER_FASTEST
    assert driver.calls == {"cuInit": 1, "cuDeviceGetCount": 1, "cuDeviceGet": 2, "cuDeviceGetPCIBusId": 2}
    assert cuda_pci_bus_ids(FakeLibcuda(init_result=CUDA_ERROR_NO_DEVICE)) == []  # CUDA_VISIBLE_DEVICES=""
    assert cuda_pci_bus_ids(FakeLibcuda(init_result=999)) is None  # broken driver: fall back to the environment


# --- NvmlMeter -----------------------------------------------------------------------------------


def test_the_meter_of_cuda_0_watches_the_card_cuda_calls_0(box: FakeNvml) -> None:
    meter = NvmlMeter.open(0, driver=FakeLibcuda(CUDA_ORDER_FASTEST), environ={})
    assert (meter.index, meter.nvml_index, meter.how) == (0, RTX3090, "libcuda")
    assert meter.device().device == "cuda:0" and meter.device().total_bytes == 24 * GiB
    box.gpus[P2000].used_bytes = 4 * GiB  # the other card filling up changes nothing here
    assert meter.device().used_bytes == 500 * MiB
    pci_ordered = NvmlMeter.open(0, driver=FakeLibcuda(["0000:01:00.0", "0000:41:00.0"]), environ={})
    assert pci_ordered.nvml_index == P2000 and pci_ordered.device().total_bytes == 5 * GiB


def test_the_meter_reads_memory_that_changes_over_time(box: FakeNvml) -> None:
    meter = NvmlMeter.open(0, driver=FakeLibcuda(CUDA_ORDER_FASTEST), environ={})
    box.gpus[RTX3090].script_used = [9 * GiB, 6 * GiB, 1 * GiB]
    assert [meter.device().used_bytes for _ in range(4)] == [9 * GiB, 6 * GiB, 1 * GiB, 1 * GiB]
    assert meter.device().free_bytes == 23 * GiB


def test_a_lost_gpu_or_driver_is_a_meter_error_naming_the_device(box: FakeNvml) -> None:
    meter = NvmlMeter.open(0, driver=FakeLibcuda(CUDA_ORDER_FASTEST), environ={})
    box.gpus[RTX3090].lost = True
    with pytest.raises(MeterError, match=r"cuda:0 \(NVML GPU 1\): GPU is lost"):
        meter.device()
    box.gpus[RTX3090].lost, box.lost = False, True
    with pytest.raises(MeterError, match="Driver Not Loaded"):
        meter.device()


def test_process_bytes_counts_a_process_and_its_children_on_this_card_only(box: FakeNvml) -> None:
    meter = NvmlMeter.open(0, driver=FakeLibcuda(CUDA_ORDER_FASTEST), environ={})
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        me = __import__("os").getpid()
        box.gpus[RTX3090].processes = {me: 2 * GiB, child.pid: 1 * GiB, 999_999: 5 * GiB}
        box.gpus[P2000].processes = {me: 3 * GiB}
        assert meter.process_bytes(me) == 3 * GiB
        assert meter.process_bytes(child.pid) == 1 * GiB
        assert meter.process_bytes(12345678) == 0  # gone
        box.gpus[RTX3090].processes[child.pid] = None  # "not available" (WDDM, no permission)
        assert meter.process_bytes(me) == 0
        assert meter.reading(me) == MemoryReading(2 * GiB, 500 * MiB)
        box.gpus[RTX3090].supported = frozenset()  # the board does not list processes
        assert meter.process_bytes(me) == 0 and meter.reading(me) == MemoryReading(None, 500 * MiB)
    finally:
        child.communicate(b"")


def test_open_meter_falls_back_to_the_host_without_nvml_or_without_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND))
    assert isinstance(open_meter(prefer_gpu=True), HostMeter)
    monkeypatch.setitem(sys.modules, "pynvml", one_gpu())
    assert isinstance(open_meter(prefer_gpu=True, gpu_index=3), HostMeter)  # no cuda:3 here
    assert isinstance(open_meter(prefer_gpu=False), HostMeter)
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([FakeGpu("GPU-x", "X", 8 * GiB, lost=True)]))
    assert isinstance(open_meter(prefer_gpu=True), HostMeter)  # lost before it was opened: logged, on the host


def test_a_board_that_does_not_say_its_compute_capability_still_gets_its_meter(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml([FakeGpu("GPU-x", "X", 8 * GiB)], fail={"nvmlDeviceGetCudaComputeCapability": NVML_ERROR_NOT_SUPPORTED})
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert open_meter(prefer_gpu=True).kind == "nvml"


def test_open_meter_on_a_gpu_host_gives_the_nvml_meter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", one_gpu())
    meter = open_meter(prefer_gpu=True, gpu_index=0)
    assert meter.kind == "nvml" and meter.device().total_bytes == 12 * GiB


# --- footprints: one basis ------------------------------------------------------------------------


def test_a_first_load_on_a_busy_gpu_is_measured_on_the_process_not_zero() -> None:
    # Before the load the worker has no CUDA context (not listed); others hold 10 GiB of the device.
    before = MemoryReading(None, 10 * GiB)
    peak = MemoryReading(3 * GiB, 13 * GiB)
    after = MemoryReading(2 * GiB, 12 * GiB)
    assert load_footprint(before, peak, after) == Footprint(2 * GiB, 3 * GiB, "process")


def test_where_the_driver_hides_the_pid_the_device_delta_is_used() -> None:
    before, peak, after = MemoryReading(None, 10 * GiB), MemoryReading(None, 14 * GiB), MemoryReading(None, 12 * GiB)
    assert load_footprint(before, peak, after) == Footprint(2 * GiB, 4 * GiB, "device")
    assert released_bytes(MemoryReading(None, 12 * GiB), MemoryReading(None, 10 * GiB)) == 2 * GiB


def test_a_second_model_in_the_same_worker_counts_only_its_own_growth() -> None:
    before, peak, after = MemoryReading(2 * GiB, 12 * GiB), MemoryReading(5 * GiB, 15 * GiB), MemoryReading(4 * GiB, 14 * GiB)
    assert load_footprint(before, peak, after) == Footprint(2 * GiB, 3 * GiB, "process")
    assert released_bytes(after, MemoryReading(2 * GiB, 12 * GiB)) == 2 * GiB
    assert released_bytes(after, MemoryReading(None, 10 * GiB)) == 4 * GiB  # the process left the device


def test_on_the_host_the_resident_set_is_the_basis() -> None:
    assert load_footprint(MemoryReading(100 * MiB), MemoryReading(400 * MiB), MemoryReading(300 * MiB)) == \
        Footprint(200 * MiB, 300 * MiB, "process")
