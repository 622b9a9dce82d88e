"""What the benchmarks share: the repository's paths, free loopback ports, child processes that are
always stopped (each in its own process group), waiting on a health URL with a deadline, and
percentiles."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_PY = ROOT / ".venvs" / "gateway" / "bin" / "python"
CAPTION_PY = ROOT / ".venvs" / "caption-svc" / "bin" / "python"


def free_port() -> int:
    """A port the kernel just gave out on 127.0.0.1 (closed again; a race is possible, but unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_png(side: int = 8) -> bytes:
    """A small RGB gradient PNG, built in memory."""
    import io

    from PIL import Image

    im = Image.new("RGB", (side, side))
    im.putdata([((x * 255) // side, (y * 255) // side, 128) for y in range(side) for x in range(side)])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


class Processes:
    """Children started in their own process groups; ``close`` stops every one (SIGTERM to the group,
    SIGKILL after a grace period). Use as a context manager so an exception still stops them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[tuple[str, subprocess.Popen, IO[bytes]]] = []

    def start(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.Popen([str(a) for a in argv], env=full_env, cwd=str(cwd or ROOT), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs.append((name, proc, log))
        return proc

    def pid(self, name: str) -> int:
        """The pid of a child, which is also its process group's id."""
        for n, proc, _ in self._procs:
            if n == name:
                return proc.pid
        raise KeyError(name)

    def check_alive(self) -> None:
        for name, proc, _ in self._procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; its log:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, name: str) -> None:
        for entry in [e for e in self._procs if e[0] == name]:
            self._stop_one(*entry)
            self._procs.remove(entry)

    @staticmethod
    def _stop_one(name: str, proc: subprocess.Popen, log: IO[bytes]) -> None:
        try:
            if proc.poll() is None:
                # The leader first, so a service can stop its own children (a model worker) in order.
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)  # its own group: the pid is the pgid
                    proc.wait(timeout=10)
            # Whatever is left of its group (a worker that outlived the service) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        finally:
            log.close()

    def close(self) -> None:
        while self._procs:
            self._stop_one(*self._procs.pop())

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def http_call(port: int, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None, timeout_s: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(procs: Processes, name: str, port: int, path: str, *, deadline_s: float = 60.0) -> None:
    """Poll ``GET path`` until it answers 200; fail early if any child died, late at the deadline."""
    deadline = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            status, body = http_call(port, "GET", path, timeout_s=2.0)
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.05)
    raise RuntimeError(f"{name} was not ready on port {port}{path} within {deadline_s:.0f} s ({last}); "
                       f"its log:\n{procs.log_tail(name)}")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = math.ceil(q / 100.0 * len(sorted_values)) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, k))]


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of one process group."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # after the command name: state(0) ppid(1) pgrp(2) ... utime(11) stime(12)
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def cpu_ticks() -> tuple[int, int]:
    """The machine's CPU time so far, in ticks: (all of it, the part the hypervisor gave other guests: steal).
    Steal over a window is the share of it this VM wanted the CPU and did not get it."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[0] - before[0]
    return 100.0 * (after[1] - before[1]) / total if total > 0 else 0.0


def machine() -> str:
    import platform

    return f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}"


def jdump(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def fail(message: str) -> None:
    print(f"ERROR: {message}", file=sys.stderr, flush=True)
