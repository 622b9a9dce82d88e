"""The GPU check's plumbing: the stack's processes, the device as NVML sees it, and small statistics.

Standard library, httpx and pynvml only (the device image has them; the rehearsal's pynvml is the fake
one, found first on PYTHONPATH). Processes start in their own process group, so a family service's
worker stops with it; readiness is polled with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = [ROOT / "modelhost", ROOT / "gateway", ROOT / "caption-svc"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen
    url: str
    log: Path

    def stop(self, timeout_s: float = 20) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout_s)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def stack_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of every process the check starts: the repository's sources importable (the
    device installs nothing of ours), then what the caller adds (the rehearsal's fake NVML)."""
    env = dict(os.environ)
    env.update(extra)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths + [str(p) for p in SOURCE_DIRS] + [str(ROOT)])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def start(name: str, argv: list[str], env: dict[str, str], port: int, logdir: Path, timeout_s: float = 120) -> Proc:
    log = logdir / f"{name}.log"
    fh = open(log, "ab")
    proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    p = Proc(name, proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready:\n{p.tail()}")
        try:
            with urllib.request.urlopen(p.url + "/health/ready", timeout=2) as r:
                if r.status == 200:
                    return p
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    p.stop()
    raise TimeoutError(f"{name} was not ready within {timeout_s:.0f} s:\n{p.tail()}")


def start_caption_svc(python: str, catalog: Path, logdir: Path, env: dict[str, str], name: str = "caption-svc") -> Proc:
    port = free_port()
    env = {**env, "CAPTION_SVC_CATALOG": str(catalog), "CAPTION_SVC_PORT": str(port),
           "CAPTION_SVC_CACHE_DIR": str(logdir / "cache"), "CAPTION_SVC_LOG_LEVEL": "INFO"}
    return start(name, [python, "-m", "caption_svc"], env, port, logdir)


def start_gateway(python: str, catalog: Path, caption_url: str, logdir: Path, env: dict[str, str],
                  data_dir: Path, name: str = "gateway", **settings: str) -> Proc:
    port = free_port()
    env = {**env, "GATEWAY_CATALOG": str(catalog), "GATEWAY_PORT": str(port), "GATEWAY_DATA_DIR": str(data_dir),
           "GATEWAY_SERVICES": json.dumps({"caption": caption_url}), "GATEWAY_RECONCILE_INTERVAL_S": "5"}
    env.update({f"GATEWAY_{k.upper()}": v for k, v in settings.items()})
    return start(name, [python, "-m", "gateway"], env, port, logdir)


class Gpu:
    """cuda:0 through NVML, found as the stack finds it (PCI bus id; ``modelhost.cuda``)."""

    def __init__(self, cuda_index: int = 0) -> None:
        import pynvml

        from modelhost.cuda import resolve_cuda_device

        self.nvml = pynvml
        pynvml.nvmlInit()
        self.resolved = resolve_cuda_device(pynvml, cuda_index)
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(self.resolved.nvml_index)

    def used(self) -> int:
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def describe(self) -> dict[str, Any]:
        n = self.nvml

        def text(v: Any) -> str:
            return v.decode() if isinstance(v, bytes) else str(v)

        info = n.nvmlDeviceGetMemoryInfo(self.handle)
        cuda = int(n.nvmlSystemGetCudaDriverVersion_v2())
        return {"name": text(n.nvmlDeviceGetName(self.handle)), "uuid": text(n.nvmlDeviceGetUUID(self.handle)),
                "pci_bus_id": text(n.nvmlDeviceGetPciInfo(self.handle).busId), "nvml_index": self.resolved.nvml_index,
                "cuda_to_nvml": self.resolved.how, "total_bytes": int(info.total), "used_bytes": int(info.used),
                "driver_version": text(n.nvmlSystemGetDriverVersion()),
                "driver_cuda_version": f"{cuda // 1000}.{(cuda % 1000) // 10}", "gpus_seen_by_nvml": n.nvmlDeviceGetCount()}


@dataclass
class Watch:
    """Polls the device's used bytes in a thread (every ``interval_s``) and keeps the highest."""

    gpu: Gpu
    interval_s: float = 0.02
    peak: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> "Watch":
        self.peak = self.gpu.used()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.gpu.used())
            self.samples += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def until_back(gpu: Gpu, target_used: int, timeout_s: float, interval_s: float = 0.005) -> float | None:
    """Seconds until the device's used bytes are down to ``target_used`` (None: not within the timeout)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if gpu.used() <= target_used:
            return time.monotonic() - t0
        time.sleep(interval_s)
    return None


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    s = sorted(values)

    def q(p: float) -> float:  # nearest rank
        return round(s[min(len(s) - 1, max(0, int(-(-p * len(s) // 1)) - 1))], 4)

    return {"n": len(s), "p50": q(0.50), "p95": q(0.95), "max": round(s[-1], 4)}


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples whose labels include ``labels`` (from /metrics text)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
