"""Real processes on loopback for the proc tier: start, wait for health by polling, stop."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VENVS = ROOT / ".venvs"
GATEWAY_PY = Path(os.environ.get("GW_PY", VENVS / "gateway" / "bin" / "python"))
CAPTION_PY = Path(os.environ.get("CAP_PY", VENVS / "caption-svc" / "bin" / "python"))
FACE_PY = Path(os.environ.get("FACE_PY", VENVS / "face-svc" / "bin" / "python"))
TTS_PY = Path(os.environ.get("TTS_PY", VENVS / "tts-svc" / "bin" / "python"))
ASR_PY = Path(os.environ.get("ASR_PY", VENVS / "asr-svc" / "bin" / "python"))


INTERNAL_TOKEN = secrets.token_urlsafe(24)
"""This test run's internal credential (modelhost.auth): every process ``start`` starts gets it under each
component's prefix (each reads its own), so every service is closed to callers without it and every gateway
sends it, as in a deployment. A test that calls a service itself sends ``INTERNAL_HEADERS``."""
INTERNAL_HEADERS = {"Authorization": f"Bearer {INTERNAL_TOKEN}"}
_TOKEN_ENV = {f"{prefix}_INTERNAL_TOKEN": INTERNAL_TOKEN
              for prefix in ("GATEWAY", "CAPTION_SVC", "FACE_SVC", "ASR_SVC", "TTS_SVC", "EMBED_SVC")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s} s (last error: {last})")


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text()[-n:] if self.log.exists() else ""


def start(name: str, argv: list[str], env: dict[str, str], port: int, logdir: Path, ready_path: str = "/health/ready",
          timeout_s: float = 60) -> Proc:
    """Start ``argv`` in its own process group (so its worker children stop with it), with this run's internal
    credential unless ``env`` sets its own (an empty value: none)."""
    log = logdir / f"{name}.log"
    fh = open(log, "ab")
    proc = subprocess.Popen(argv, env={**os.environ, **_TOKEN_ENV, **env}, stdout=fh, stderr=subprocess.STDOUT,
                            cwd=ROOT, start_new_session=True)
    p = Proc(name, proc, port, log)
    try:
        wait_http(p.url + ready_path, timeout_s, proc, log)
    except Exception:
        p.stop()
        raise
    return p


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05) -> None:  # noqa: ANN001
    """Poll ``predicate`` until it is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(interval_s)
    raise TimeoutError(f"condition not met within {timeout_s} s")


def standalone_catalog(tiny_catalog: Path, out: Path, ids: tuple[str, ...] | None = None,
                       family: str | None = None) -> Path:
    """The tiny catalog (only ``ids``, or only ``family``'s models, when given) with estimates that do
    not fit twice in the proc tests' 1,100 MB budget, so the coordinator never puts two models in one
    worker: each model then loads alone into a fresh worker and is measured with the framework it
    imports (about 750 MiB), and each swap is real. Sources are made absolute (it is written elsewhere)."""
    raw = yaml.safe_load(tiny_catalog.read_text())
    raw["models"] = [m for m in raw["models"] if (ids is None or m["id"] in ids)
                     and (family is None or m.get("family", "caption") == family)]
    for m in raw["models"]:
        m["source"] = str((tiny_catalog.parent / m["source"]).resolve())
        m["memory_estimate_mb"] = 600
    out.mkdir(parents=True, exist_ok=True)
    path = out / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start_caption_svc(catalog: Path, logdir: Path, **settings: str) -> Proc:
    port = int(settings.pop("port", 0)) or free_port()
    env = {"CAPTION_SVC_CATALOG": str(catalog), "CAPTION_SVC_PORT": str(port), "CAPTION_SVC_LOG_LEVEL": "INFO"}
    env.update({f"CAPTION_SVC_{k.upper()}": v for k, v in settings.items()})
    return start("caption-svc", [str(CAPTION_PY), "-m", "caption_svc"], env, port, logdir)


def start_tts_svc(catalog: Path, logdir: Path, **settings: str) -> Proc:
    port = free_port()
    env = {"TTS_SVC_CATALOG": str(catalog), "TTS_SVC_PORT": str(port), "TTS_SVC_LOG_LEVEL": "INFO"}
    env.update({f"TTS_SVC_{k.upper()}": v for k, v in settings.items()})
    return start("tts-svc", [str(TTS_PY), "-m", "tts_svc"], env, port, logdir)


def start_asr_svc(catalog: Path, logdir: Path, **settings: str) -> Proc:
    port = free_port()
    env = {"ASR_SVC_CATALOG": str(catalog), "ASR_SVC_PORT": str(port), "ASR_SVC_LOG_LEVEL": "INFO"}
    env.update({f"ASR_SVC_{k.upper()}": v for k, v in settings.items()})
    return start("asr-svc", [str(ASR_PY), "-m", "asr_svc"], env, port, logdir)


def start_face_svc(catalog: Path, logdir: Path, **settings: str) -> Proc:
    port = free_port()
    env = {"FACE_SVC_CATALOG": str(catalog), "FACE_SVC_PORT": str(port), "FACE_SVC_LOG_LEVEL": "INFO"}
    env.update({f"FACE_SVC_{k.upper()}": v for k, v in settings.items()})
    return start("face-svc", [str(FACE_PY), "-m", "face_svc"], env, port, logdir)


def start_gateway(catalog: Path, services: dict[str, str], logdir: Path, name: str = "gateway", **settings: str) -> Proc:
    import json

    port = free_port()
    env = {"GATEWAY_CATALOG": str(catalog), "GATEWAY_PORT": str(port), "GATEWAY_SERVICES": json.dumps(services),
           "GATEWAY_DATA_DIR": str(logdir / f"{name}-{port}-data")}
    env.update({f"GATEWAY_{k.upper()}": v for k, v in settings.items()})
    return start(name, [str(GATEWAY_PY), "-m", "gateway"], env, port, logdir)


def build_tiny_models(out: Path) -> Path:
    """Build the tiny caption models with the caption environment; returns the catalog path."""
    subprocess.run([str(CAPTION_PY), str(ROOT / "tools" / "make_tiny_models.py"), str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=sys.stderr, timeout=300)
    return out / "catalog.yaml"


def start_ollama(models: dict[str, dict], logdir: Path, env: dict[str, str] | None = None, port: int | None = None,
                 resident: tuple[str, ...] = (), name: str = "ollama", keep_alive: str = "5m") -> Proc:
    """The Ollama stand-in (``tests/doubles/ollama_server.py``): ``models`` is name -> {"bytes", "load_s",
    "unload_s"}; ``resident`` are loaded before it answers. ``env`` carries the fake NVML's (``write_spec``);
    ``port`` lets a test start it again where it was."""
    import json

    port = port or free_port()
    argv = [str(GATEWAY_PY), "-m", "tests.doubles.ollama_server", "--port", str(port), "--models", json.dumps(models),
            "--keep-alive", keep_alive] + [a for m in resident for a in ("--resident", m)]
    return start(name, argv, env or {}, port, logdir, ready_path="/api/version")


def start_llama_swap(models: dict[str, dict], logdir: Path, env: dict[str, str] | None = None, port: int | None = None,
                     resident: tuple[str, ...] = (), name: str = "llama-swap", api_unload: bool = True) -> Proc:
    """The llama-swap stand-in (``tests/doubles/llama_swap_server.py``), as ``start_ollama``; ``api_unload``
    False: an older llama-swap, with ``GET /unload`` alone."""
    import json

    port = port or free_port()
    argv = [str(GATEWAY_PY), "-m", "tests.doubles.llama_swap_server", "--port", str(port), "--models", json.dumps(models)]
    argv += [a for m in resident for a in ("--resident", m)] + ([] if api_unload else ["--no-api-unload"])
    return start(name, argv, env or {}, port, logdir, ready_path="/health")
