"""The worker: a child process that holds a family's models, and the parent's handle on it.

Why a child process: a framework's "unload" (``del model; empty_cache()``) leaves the CUDA context
and allocator pools behind — hundreds of MB that only the end of the process gives back. Models
therefore live in a child; unloading the last one ends the child, and a service with no resident
model holds no device memory at all.

Protocol (pickled tuples over a socketpair, one request at a time per model, replies in any order):

    parent → child   (msg_id, op, payload)      op ∈ load, unload, infer, memory, shutdown
    child → parent   (msg_id, "ok", payload) | (msg_id, "err", {"kind", "message"})

The child starts a thread per model, so a long load of one model never blocks inference on
another. Inside ``infer`` an out-of-memory error splits the batch in halves and retries down to
single items; only a single item that does not fit fails, with kind ``out_of_memory``.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable

from .contract import LoadMeasurement

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Errors the parent sees
# --------------------------------------------------------------------------------------------


class WorkerError(Exception):
    """The worker answered with an error. ``kind`` is a closed set of strings."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class WorkerDied(Exception):
    """The worker process exited (or its pipe broke) while requests were in flight."""


@dataclass(frozen=True)
class ItemOutcome:
    """One item's outcome in a batch: a result, or an error kind and message."""

    ok: bool
    value: Any = None
    kind: str | None = None
    message: str | None = None


# --------------------------------------------------------------------------------------------
# Child side
# --------------------------------------------------------------------------------------------


class _Sampler:
    """Samples a memory reading in a thread and keeps the peak (load + warm-up peak)."""

    def __init__(self, read: Callable[[], int], interval_s: float = 0.01) -> None:
        self._read = read
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.peak = read()
        self._thread = threading.Thread(target=self._run, name="mem-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.peak = max(self.peak, self._read())

    def __enter__(self) -> "_Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._read())


class _ChildMeter:
    """What the child measures about itself: its own GPU bytes through NVML where the driver
    reports them per process, else the device's used bytes; on a host without a GPU, its RSS."""

    def __init__(self, gpu_index: int | None) -> None:
        self._nvml = None
        if gpu_index is not None:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(gpu_index)
            except Exception as e:  # NVML's error family, or no library
                log.warning("worker: NVML not usable (%s); measuring host memory", e)
                self._nvml = None

    def read(self) -> int:
        if self._nvml is None:
            from .meter import self_rss_bytes

            return self_rss_bytes()
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
            mine = [int(p.usedGpuMemory or 0) for p in procs if p.pid == os.getpid()]
            if mine:
                return sum(mine)
        except self._nvml.NVMLError:
            pass
        # Containers without the host pid namespace: the device total is the next best truth.
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)


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


class _Child:
    def __init__(self, conn: Connection, gpu_index: int | None) -> None:
        self.conn = conn
        self.meter = _ChildMeter(gpu_index)
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
        before = self.meter.read()
        backend = None
        try:
            with _Sampler(self.meter.read) as sampler:
                t0 = time.perf_counter()
                backend = import_backend(payload["backend_path"])(spec, payload["cache_dir"])
                device = backend.load()
                t1 = time.perf_counter()
                backend.warmup()
                t2 = time.perf_counter()
        except BaseException as e:
            if backend is not None:
                try:
                    backend.close()
                except Exception:
                    pass
            del backend
            _release_host_memory()
            raise WorkerError("load_failed", f"{type(e).__name__}: {e}") from e
        after = self.meter.read()
        self.models[spec.id] = backend
        return LoadMeasurement(
            device=str(device),
            memory_bytes=max(0, after - before),
            peak_memory_bytes=max(0, sampler.peak - before, after - before),
            load_s=t1 - t0,
            warmup_s=t2 - t1,
        )

    def op_unload(self, payload: dict) -> dict:
        name = payload["model"]
        backend = self.models.pop(name, None)
        if backend is None:
            return {"freed_bytes": 0, "was_loaded": False}
        before = self.meter.read()
        try:
            backend.close()
        finally:
            del backend
            _release_host_memory()
        return {"freed_bytes": max(0, before - self.meter.read()), "was_loaded": True}

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

    def op_memory(self, payload: dict) -> dict:
        return {"bytes": self.meter.read(), "models": sorted(self.models)}

    # loop -----------------------------------------------------------------------------------

    def serve(self) -> None:
        self.send((0, "ok", {"hello": os.getpid()}))
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
            handler = {"load": self.op_load, "unload": self.op_unload, "infer": self.op_infer}.get(op)
            if handler is None:
                self.send((msg_id, "err", {"kind": "bad_op", "message": f"unknown op {op!r}"}))
                continue
            model = payload.get("model") or payload.get("spec", {}).get("id", "")
            ex = self.executors.get(model)
            if ex is None:
                ex = self.executors[model] = ThreadPoolExecutor(1, thread_name_prefix=f"model-{model}")
            ex.submit(self.reply, msg_id, lambda h=handler, p=payload: h(p))


def child_main() -> None:
    """Entry point of ``python -m modelhost.worker FD``."""
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


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------


class WorkerProcess:
    """The parent's handle on one worker child. All methods are called from the event loop;
    replies arrive on a reader thread and resolve futures on the loop."""

    def __init__(self, *, gpu_index: int | None, on_exit: Callable[["WorkerProcess", int | None], None],
                 threads: int | None = None) -> None:
        self._gpu_index = gpu_index
        self._threads = threads if threads is not None else max(1, (os.cpu_count() or 2) - 1)
        self._on_exit = on_exit
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hello: asyncio.Future | None = None
        self._stopping = False
        self.dead = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self, timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        parent_sock, child_sock = socket.socketpair()
        child_fd = child_sock.fileno()
        path = os.pathsep.join(p for p in sys.path if p)
        args = [sys.executable, "-m", "modelhost.worker", str(child_fd),
                "host" if self._gpu_index is None else str(self._gpu_index), path]
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            # An operator's explicit setting wins; otherwise the frameworks must not take every core
            # from the HTTP process that feeds them (on 2 cores: 29 ms per item instead of 650 ms).
            env.setdefault(var, str(self._threads))
        self._proc = subprocess.Popen(args, pass_fds=(child_fd,), close_fds=True, env=env)
        child_sock.close()
        self._conn = Connection(parent_sock.detach())
        self._hello = self._loop.create_future()
        self._pending[0] = self._hello
        threading.Thread(target=self._read, name=f"worker-reader-{self._proc.pid}", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(self._hello), timeout_s)
        except asyncio.TimeoutError:
            self.kill()
            raise WorkerDied(f"worker did not start within {timeout_s:.0f} s")
        log.info("worker started (pid %d)", self._proc.pid)

    def _read(self) -> None:
        assert self._conn is not None and self._loop is not None
        while True:
            try:
                msg_id, status, payload = self._conn.recv()
            except (EOFError, OSError):
                break
            self._loop.call_soon_threadsafe(self._resolve, msg_id, status, payload)
        code = self._proc.wait() if self._proc else None
        self._loop.call_soon_threadsafe(self._died, code)

    def _resolve(self, msg_id: int, status: str, payload: Any) -> None:
        fut = self._pending.pop(msg_id, None)
        if fut is None or fut.done():
            return
        if status == "ok":
            fut.set_result(payload)
        else:
            fut.set_exception(WorkerError(payload["kind"], payload["message"]))

    def _died(self, code: int | None) -> None:
        self.dead = True
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(WorkerDied(f"worker process exited (code {code})"))
        if self._conn is not None:
            self._conn.close()
        if not self._stopping:
            log.error("worker (pid %s) exited unexpectedly with code %s", self.pid, code)
        self._on_exit(self, code)

    async def call(self, op: str, payload: dict, timeout_s: float | None = None) -> Any:
        if self.dead or self._conn is None or self._loop is None:
            raise WorkerDied("worker is not running")
        msg_id = next(self._ids)
        fut = self._loop.create_future()
        self._pending[msg_id] = fut
        conn = self._conn

        def send() -> None:
            with self._send_lock:
                conn.send((msg_id, op, payload))

        try:
            await asyncio.to_thread(send)
        except (OSError, ValueError) as e:
            self._pending.pop(msg_id, None)
            raise WorkerDied(f"worker pipe broke: {e}") from e
        if timeout_s is None:
            return await fut
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except asyncio.TimeoutError:
            self._pending.pop(msg_id, None)
            raise

    async def stop(self, timeout_s: float = 10.0) -> int | None:
        """Ask the child to exit and wait until it has; kill it if it does not. Returns its code."""
        self._stopping = True
        if self._proc is None:
            return None
        if not self.dead:
            try:
                await self.call("shutdown", {}, timeout_s=timeout_s)
            except (WorkerDied, WorkerError, asyncio.TimeoutError):
                pass
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._proc.wait), timeout_s)
        except asyncio.TimeoutError:
            log.warning("worker (pid %d) did not exit in %.0f s; killing it", self._proc.pid, timeout_s)
            self.kill()
            return await asyncio.to_thread(self._proc.wait)

    def kill(self) -> None:
        self._stopping = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()


if __name__ == "__main__":
    # Run the copy imported under its real name, so pickled classes are modelhost.worker.X,
    # not __main__.X (which the parent could not unpickle).
    from modelhost.worker import child_main as _child_main

    _child_main()
