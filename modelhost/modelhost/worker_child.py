"""The worker child: the process that holds a family's models (``python -m modelhost.worker``).

``modelhost.worker`` states why models live in a child and the protocol; this module is the child's
side of it. It starts a thread per model, so a long load of one model never blocks inference on
another. Inside ``infer`` an out-of-memory error splits the batch in halves and retries down to
single items; only a single item that does not fit fails, with kind ``out_of_memory``. Any other
failure of a batch retries its items one by one, so one bad item never fails its batch-mates.

Nothing a backend raises ends the child: every error is answered as ``(msg_id, "err", ...)``. The
child ends when the parent asks (``shutdown``) or goes away (its end of the pipe closes).

The classes it pickles back (``ItemOutcome``) are imported from ``modelhost.worker`` under their
real name, so the parent can unpickle them.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, Callable

from .contract import LoadMeasurement
from .meter import MemoryReading, MeterError, NvmlMeter, load_footprint, released_bytes, self_rss_bytes
from .oom import is_out_of_memory
from .worker import BEAT_ID, HEARTBEAT_S, ItemOutcome, WorkerError

log = logging.getLogger(__name__)


class _Sampler:
    """Samples a memory reading in a thread and keeps the peak (load + warm-up peak), field by field."""

    def __init__(self, read: Callable[[], MemoryReading], interval_s: float = 0.01) -> None:
        self._read = read
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.peak = read()
        self._thread = threading.Thread(target=self._run, name="mem-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def _sample(self) -> None:
        try:
            self.peak = self.peak.max(self._read())
        except MeterError as e:  # the GPU went away mid-load: the load itself will fail and say so
            log.warning("worker: memory sampling failed: %s", e)

    def __enter__(self) -> "_Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class _ChildMeter:
    """What the child measures about itself: its own GPU bytes through NVML where the driver lists
    it, and the device's used bytes (``MemoryReading``; ``load_footprint`` picks one basis); on a
    host without a GPU, its resident set. ``gpu_index`` is CUDA's ordinal (cuda:N); the meter maps
    it to NVML's device by PCI bus id, so it watches the card the model is on."""

    def __init__(self, gpu_index: int | None) -> None:
        self._nvml: NvmlMeter | None = None
        if gpu_index is not None:
            try:
                self._nvml = NvmlMeter.open(gpu_index)
            except Exception as e:  # NVML's error family, no library, or no such GPU
                log.warning("worker: NVML not usable for cuda:%d (%s); measuring host memory", gpu_index, e)

    @property
    def kind(self) -> str:
        return "host" if self._nvml is None else "nvml"

    def read(self) -> MemoryReading:
        if self._nvml is None:
            return MemoryReading(self_rss_bytes())
        return self._nvml.reading(os.getpid())

    def read_or_none(self) -> MemoryReading | None:
        try:
            return self.read()
        except MeterError as e:
            log.warning("worker: %s", e)
            return None


def _release_host_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover - best effort
            pass
    try:  # give freed heap pages back to the OS so RSS tells the truth on CPU
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - not glibc
        pass


def _device_initialized() -> bool:
    """Whether this process has initialised CUDA through torch (a spare must not have)."""
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # pragma: no cover - a torch without cuda bindings
        return False


class _Child:
    def __init__(self, conn: Connection, gpu_index: int | None) -> None:
        self.conn = conn
        self.meter = _ChildMeter(gpu_index)
        # On the host meter, a process's first model is charged what the process took for its frameworks, as
        # in a worker started cold, whose first load imports them: so a load into a warm spare (imports done
        # ahead) measures the same footprint as one into a cold worker. On a GPU the spare holds nothing and
        # its first load creates the context, which that load's own readings include.
        self.start_reading = self.meter.read_or_none() if self.meter.kind == "host" else None
        self.models: dict[str, Any] = {}
        self.executors: dict[str, ThreadPoolExecutor] = {}
        self.send_lock = threading.Lock()

    def send(self, msg: tuple) -> None:
        with self.send_lock:
            self.conn.send(msg)

    def reply(self, msg_id: int, fn: Callable[[], Any]) -> None:
        try:
            self.send((msg_id, "ok", fn()))
        except WorkerError as e:
            self.send((msg_id, "err", {"kind": e.kind, "message": e.message}))
        except BaseException as e:  # anything a backend raises is reported, never kills the child
            log.exception("worker: request %s failed", msg_id)
            self.send((msg_id, "err", {"kind": "internal", "message": f"{type(e).__name__}: {e}"}))

    # ops ------------------------------------------------------------------------------------

    def op_load(self, payload: dict) -> LoadMeasurement:
        from .backend import import_backend
        from .catalog import ModelSpec

        spec = ModelSpec(**payload["spec"])
        if spec.id in self.models:
            raise WorkerError("already_loaded", f"{spec.id} is already loaded in this worker")
        backend = None
        try:  # a meter that fails (a lost GPU) fails the load, which then frees what it took
            before = self.meter.read()
            if self.start_reading is not None and not self.models:
                before = self.start_reading
            with _Sampler(self.meter.read) as sampler:
                t0 = time.perf_counter()
                backend = import_backend(payload["backend_path"])(spec, payload["cache_dir"])
                device = backend.load()
                t1 = time.perf_counter()
                backend.warmup()
                t2 = time.perf_counter()
            after = self.meter.read()
        except BaseException as e:
            kind = "out_of_memory" if is_out_of_memory(e) or (backend is not None and backend.is_out_of_memory(e)) \
                else "load_failed"  # no room on the device: the gateway makes room and loads again
            if backend is not None:
                try:
                    backend.close()
                except Exception:
                    pass
            del backend
            _release_host_memory()
            raise WorkerError(kind, f"{type(e).__name__}: {e}") from e
        self.models[spec.id] = backend
        footprint = load_footprint(before, sampler.peak, after)
        log.info("worker: %s measured on its %s bytes (%s meter): %d resident, %d peak", spec.id, footprint.basis,
                 self.meter.kind, footprint.memory_bytes, footprint.peak_memory_bytes)
        return LoadMeasurement(
            device=str(device),
            memory_bytes=footprint.memory_bytes,
            peak_memory_bytes=footprint.peak_memory_bytes,
            load_s=t1 - t0,
            warmup_s=t2 - t1,
            can_park=bool(backend.can_park),
        )

    def op_park(self, payload: dict) -> dict:
        """Move a model's weights to host memory (``Backend.park``); answer what the device gave back and what
        the weights take in host memory. Called only while no inference of it runs (the runtime drains it)."""
        backend = self._loaded(payload["model"])
        if not backend.can_park:
            raise WorkerError("cannot_park", f"{type(backend).__name__} cannot park")
        before, rss_before = self.meter.read_or_none(), self_rss_bytes()
        t0 = time.perf_counter()
        host_bytes = backend.park()
        _release_host_memory()
        park_s = time.perf_counter() - t0
        after = self.meter.read_or_none()
        if host_bytes is None:
            host_bytes = max(0, self_rss_bytes() - rss_before)
        freed = released_bytes(before, after) if before is not None and after is not None and self.meter.kind == "nvml" else 0
        return {"freed_bytes": freed, "host_bytes": int(host_bytes), "park_s": park_s}

    def op_unpark(self, payload: dict) -> dict:
        """Copy a parked model back to its device (``Backend.unpark``) and pass its warm-up again."""
        backend = self._loaded(payload["model"])
        t0 = time.perf_counter()
        backend.unpark()
        t1 = time.perf_counter()
        backend.warmup()
        return {"unpark_s": t1 - t0, "warmup_s": time.perf_counter() - t1}

    def _loaded(self, name: str) -> Any:
        backend = self.models.get(name)
        if backend is None:
            raise WorkerError("not_loaded", f"{name} is not loaded in this worker")
        return backend

    def op_unload(self, payload: dict) -> dict:
        name = payload["model"]
        backend = self.models.pop(name, None)
        if backend is None:
            return {"freed_bytes": 0, "was_loaded": False}
        before = self.meter.read_or_none()  # a lost GPU must not keep the model here
        try:
            backend.close()
        finally:
            del backend
            _release_host_memory()
        after = self.meter.read_or_none()
        freed = released_bytes(before, after) if before is not None and after is not None else 0
        return {"freed_bytes": freed, "was_loaded": True}

    def op_infer(self, payload: dict) -> dict:
        backend = self.models.get(payload["model"])
        if backend is None:
            raise WorkerError("not_loaded", f"{payload['model']} is not loaded in this worker")
        counters = {"oom_events": 0}
        outcomes = self._run(backend, list(payload["items"]), counters)
        return {"outcomes": outcomes, **counters}

    def _run(self, backend: Any, items: list, counters: dict) -> list[ItemOutcome]:
        try:
            results = backend.infer(items)
            if len(results) != len(items):
                raise RuntimeError(f"backend returned {len(results)} results for {len(items)} items")
            return [ItemOutcome(ok=True, value=r) for r in results]
        except Exception as e:
            if backend.is_out_of_memory(e):
                counters["oom_events"] += 1
                _release_host_memory()
                if len(items) == 1:
                    log.warning("worker: one item does not fit in memory on its own: %s", e)
                    return [ItemOutcome(ok=False, kind="out_of_memory", message="the item does not fit in device memory")]
                mid = len(items) // 2
                log.warning("worker: out of memory on a batch of %d; splitting into %d + %d", len(items), mid, len(items) - mid)
                return self._run(backend, items[:mid], counters) + self._run(backend, items[mid:], counters)
            if len(items) > 1:
                # One bad item must not fail its batch-mates: run each alone to find it.
                log.warning("worker: batch of %d failed (%s: %s); retrying items one by one", len(items), type(e).__name__, e)
                return [o for item in items for o in self._run(backend, [item], counters)]
            log.warning("worker: inference failed: %s: %s", type(e).__name__, e)
            return [ItemOutcome(ok=False, kind="inference_failed", message=f"{type(e).__name__}: {e}")]

    def op_preload(self, payload: dict) -> dict:
        """Make this process a warm spare: import the family's backends and their frameworks
        (``Backend.preload``). Imports only: no device is touched, so a spare holds no device memory;
        the load that takes it creates the CUDA context. A load may arrive while this runs: it then
        waits on the same import locks instead of importing twice."""
        from .backend import preload_modules

        t0 = time.perf_counter()
        imported, failed = preload_modules(list(payload["backend_paths"]))
        for name, why in failed.items():
            log.warning("worker: preload of %s failed: %s", name, why)
        return {"imported": imported, "failed": failed, "preload_s": time.perf_counter() - t0,
                "device_initialized": _device_initialized()}

    def op_memory(self, payload: dict) -> dict:
        return {"bytes": self.meter.read().bytes, "models": sorted(self.models)}

    # loop -----------------------------------------------------------------------------------

    def beat(self) -> None:
        """Say it is alive every HEARTBEAT_S, whatever the model threads do (``modelhost.worker``)."""
        while True:
            time.sleep(HEARTBEAT_S)
            try:
                self.send((BEAT_ID, "ok", None))
            except (OSError, ValueError):
                return  # the pipe is gone: the parent is, or the process is ending

    def serve(self) -> None:
        try:
            self.send((0, "ok", {"hello": os.getpid()}))
        except (BrokenPipeError, EOFError, OSError):
            return  # the parent gave up on this start (a cancelled spare, a service stopping): exit quietly
        threading.Thread(target=self.beat, name="heartbeat", daemon=True).start()
        while True:
            try:
                msg_id, op, payload = self.conn.recv()
            except (EOFError, OSError):
                return  # parent gone: exit with it
            if op == "shutdown":
                self.reply(msg_id, lambda: {"bye": True})
                return
            if op == "memory":
                self.reply(msg_id, lambda p=payload: self.op_memory(p))
                continue
            handler = {"load": self.op_load, "unload": self.op_unload, "infer": self.op_infer,
                       "preload": self.op_preload, "park": self.op_park, "unpark": self.op_unpark}.get(op)
            if handler is None:
                self.send((msg_id, "err", {"kind": "bad_op", "message": f"unknown op {op!r}"}))
                continue
            model = payload.get("model") or payload.get("spec", {}).get("id", "")
            ex = self.executors.get(model)
            if ex is None:
                ex = self.executors[model] = ThreadPoolExecutor(1, thread_name_prefix=f"model-{model}")
            ex.submit(self.reply, msg_id, lambda h=handler, p=payload: h(p))


def child_main() -> None:
    """Entry point of ``python -m modelhost.worker FD GPU_INDEX|host SYS_PATH``."""
    fd = int(sys.argv[1])
    gpu_index = None if sys.argv[2] == "host" else int(sys.argv[2])
    extra_path = [p for p in sys.argv[3].split(os.pathsep) if p] if len(sys.argv) > 3 else []
    for p in reversed(extra_path):
        if p not in sys.path:
            sys.path.insert(0, p)
    logging.basicConfig(
        level=os.environ.get("MODELHOST_WORKER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s worker[%(process)d] %(name)s: %(message)s",
    )
    conn = Connection(fd)
    try:
        _Child(conn, gpu_index).serve()
    finally:
        conn.close()
    os._exit(0)  # do not wait for model threads (a stuck backend must not keep the process alive)
