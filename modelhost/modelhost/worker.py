"""The worker: a child process that holds a family's models, and the parent's handle on it.

Why a child process: a framework's "unload" (``del model; empty_cache()``) leaves the CUDA context
and allocator pools behind — hundreds of MB that only the end of the process gives back. Models
therefore live in a child; unloading the last one ends the child, and a service with no resident
model holds no device memory at all.

Protocol (pickled tuples over a socketpair, one request at a time per model, replies in any order):

    parent → child   (msg_id, op, payload)      op ∈ preload, load, unload, infer, memory, shutdown
    child → parent   (msg_id, "ok", payload) | (msg_id, "err", {"kind", "message"})
    child → parent   (BEAT_ID, "ok", None)      every HEARTBEAT_S, from a thread of its own

The heartbeat is how the parent tells a worker that does not answer (SIGSTOPped, frozen, swapped out)
from one that is busy: a load or an inference runs on a model's thread (and mostly outside the GIL), so
the heartbeat thread keeps its pace whatever the models do, while a stopped process sends nothing.
``WorkerProcess.silent_s`` is the time since the child was last heard from; the service's readiness
turns 503 past ``worker_silent_s`` (``modelhost.workers``). Nothing is sent to the child to ask, so a
check can never block on a child that does not read, and costs the event loop one subtraction. The one
busy worker it would take for hung is one whose backend holds the GIL in a single call for longer than
``worker_silent_s`` (10 s); torch, ONNX Runtime and CTranslate2 release it in their kernels.

This module holds what both sides share (the errors, ``ItemOutcome``) and the parent's side,
``WorkerProcess``; the child's side (a thread per model, the out-of-memory batch split) is in
``modelhost.worker_child``. The child is started as ``python -m modelhost.worker``, so its command
line names this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
"""How often the child says it is alive."""
BEAT_ID = -1
"""The msg_id of a heartbeat (requests count up from 1; the hello is 0)."""


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
# Parent side
# --------------------------------------------------------------------------------------------


ExitCallback = Callable[["WorkerProcess", "int | None"], None]
"""Called on the event loop once a worker's process has exited, with its exit code."""


class WorkerProcess:
    """The parent's handle on one worker child. All methods are called from the event loop;
    replies arrive on a reader thread and resolve futures on the loop."""

    def __init__(self, *, gpu_index: int | None, on_exit: ExitCallback,
                 threads: int | None = None) -> None:
        self._gpu_index = gpu_index
        self._threads = threads if threads is not None else max(1, (os.cpu_count() or 2) - 1)
        self.on_exit = on_exit  # reassigned when a warm spare becomes the family's worker (``modelhost.spare``)
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hello: asyncio.Future | None = None
        self._stopping = False
        self.dead = False
        self._last_heard = time.monotonic()  # any message from the child: a reply or a heartbeat

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
        # Off the event loop: a fork and exec of this process takes milliseconds that would hold every request
        # (a spare is started right after a load, as the load's reply goes out). Cancelled meanwhile, the
        # child still starts, finds its pipe closed and exits.
        try:
            self._proc = await asyncio.to_thread(subprocess.Popen, args, pass_fds=(child_fd,), close_fds=True, env=env)
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        self._conn = Connection(parent_sock.detach())
        self._hello = self._loop.create_future()
        self._pending[0] = self._hello
        threading.Thread(target=self._read, name=f"worker-reader-{self._proc.pid}", daemon=True).start()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._hello)
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
            self._last_heard = time.monotonic()  # a float stored from this thread, read on the loop
            if msg_id != BEAT_ID:
                self._loop.call_soon_threadsafe(self._resolve, msg_id, status, payload)
        code = self._proc.wait() if self._proc else None
        with contextlib.suppress(RuntimeError):  # the event loop closed first (its service ended before the worker)
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
        self.on_exit(self, code)

    def silent_s(self) -> float:
        """Seconds since the child was last heard from (a reply or a heartbeat)."""
        return time.monotonic() - self._last_heard

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
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(fut)
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
            async with asyncio.timeout(timeout_s):
                return await asyncio.to_thread(self._proc.wait)
        except asyncio.TimeoutError:
            log.warning("worker (pid %d) did not exit in %.0f s; killing it", self._proc.pid, timeout_s)
            self.kill()
            return await asyncio.to_thread(self._proc.wait)

    def kill(self) -> None:
        self._stopping = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()


if __name__ == "__main__":
    # The child's entry point. Import it under its real name, so the classes it pickles are
    # modelhost.worker.X, not __main__.X (which the parent could not unpickle).
    from modelhost.worker_child import child_main

    child_main()
