"""scripts/dev.sh (make dev) as a supervisor: a component that dies is named with its exit status and its
log, and started again while the others keep running; after DEV_RESTARTS restarts it is given up on, and
the rest still run; SIGTERM stops everything. The components are stand-ins (a tiny HTTP server per
port), so this tests the script, not the services."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests import procs

pytestmark = pytest.mark.proc

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("caption_svc", "face_svc", "tts_svc", "asr_svc", "embed_svc", "gateway")
STUB = """#!/usr/bin/env bash
# The stand-in of a component's python: dev.sh runs "<python> -m <module>"; this serves the module's port.
case $2 in
  caption_svc) port=$CAPTION_SVC_PORT ;; face_svc) port=$FACE_SVC_PORT ;; tts_svc) port=$TTS_SVC_PORT ;;
  asr_svc) port=$ASR_SVC_PORT ;; embed_svc) port=$EMBED_SVC_PORT ;; gateway) port=$GATEWAY_PORT ;;
esac
echo $$ > "$STUB_DIR/$2.pid"
exec "$REAL_PY" -u "$STUB_DIR/server.py" "$2" "$port"
"""
SERVER = """
import http.server, sys
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
print(f"{sys.argv[1]} serving on {sys.argv[2]}", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Ok).serve_forever()
"""


class Dev:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        stub = tmp / "python"
        stub.write_text(STUB)
        stub.chmod(0o755)
        (tmp / "server.py").write_text(SERVER)
        (tmp / "catalog.yaml").write_text("models: []\n")
        self.ports = {m: procs.free_port() for m in MODULES}
        self.out = tmp / "dev.out"
        env = {**os.environ, "STUB_DIR": str(tmp), "REAL_PY": sys.executable, "CATALOG": str(tmp / "catalog.yaml"),
               "DEV_SAMPLES": "0", "DEV_READY_FILE": str(tmp / "ready"), "DEV_LOG_DIR": str(tmp / "logs"),
               "DEV_RESTARTS": "2", **{k: str(stub) for k in ("GW_PY", "CAP_PY", "FACE_PY", "TTS_PY", "ASR_PY", "EMBED_PY")},
               "GATEWAY_PORT": str(self.ports["gateway"]), "CAPTION_PORT": str(self.ports["caption_svc"]),
               "FACE_PORT": str(self.ports["face_svc"]), "TTS_PORT": str(self.ports["tts_svc"]),
               "ASR_PORT": str(self.ports["asr_svc"]), "EMBED_PORT": str(self.ports["embed_svc"])}
        self.proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "dev.sh")], env=env, cwd=ROOT,
                                     stdout=open(self.out, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def pid(self, module: str) -> int:
        return int((self.dir / f"{module}.pid").read_text())

    def answers(self, module: str) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.ports[module]}/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        return self.out.read_text(errors="replace")


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    d = Dev(tmp_path)
    try:
        procs.wait_until(lambda: (tmp_path / "ready").exists() or d.proc.poll() is not None, 60)
        assert d.proc.poll() is None, d.output()
        yield d
    finally:
        if d.proc.poll() is None:
            os.killpg(d.proc.pid, signal.SIGKILL)
            d.proc.wait(10)


def test_a_crashed_component_is_named_and_restarted_while_the_others_keep_running(dev: Dev) -> None:
    others = {m: dev.pid(m) for m in MODULES if m != "face_svc"}
    for restart in (1, 2):
        old = dev.pid("face_svc")
        os.kill(old, signal.SIGKILL)
        procs.wait_until(lambda: dev.pid("face_svc") != old and dev.answers("face_svc"), 30)
        out = dev.output()
        assert f"== face-svc exited with status 137; its log: {dev.dir / 'logs'}/face-svc.log" in out, out
        assert f"restart {restart} of 2" in out, out
    assert {m: dev.pid(m) for m in others} == others and all(dev.answers(m) for m in others)
    assert "face_svc serving on" in (dev.dir / "logs" / "face-svc.log").read_text()

    os.kill(dev.pid("face_svc"), signal.SIGKILL)  # its third death: given up on
    procs.wait_until(lambda: "not restarting it" in dev.output(), 30)
    assert "face-svc exited 3 times; not restarting it (the others keep running)" in dev.output()
    assert dev.proc.poll() is None and all(dev.answers(m) for m in others)

    dev.proc.send_signal(signal.SIGTERM)
    dev.proc.wait(30)
    for pid in others.values():
        procs.wait_until(lambda: not Path(f"/proc/{pid}").exists(), 15)
