"""A worker that does not answer (issue 13, item 7): SIGSTOP the worker of a real caption service and its
readiness turns 503 within ``worker_silent_s`` plus a beat, the gateway's readiness names it; SIGCONT and both
are ready again. A worker busy with a long inference is not taken for hung: its heartbeat has a thread of its own.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from PIL import Image

from tests import procs

pytestmark = pytest.mark.proc

SILENT_S = 3.0


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.radial_gradient("L").resize((32, 24)).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def stack(tiny_catalog: Path, logdir: Path) -> Iterator[tuple[procs.Proc, procs.Proc]]:
    svc = procs.start_caption_svc(tiny_catalog, logdir, worker_silent_s=str(SILENT_S), spare_worker="false")
    gw = procs.start_gateway(tiny_catalog, {"caption": svc.url}, logdir, name="gateway-hung-worker")
    yield svc, gw
    gw.stop()
    svc.stop()


def worker_pid(svc: procs.Proc) -> int:
    with httpx.Client(base_url=svc.url, headers=procs.INTERNAL_HEADERS, timeout=120) as c:
        assert c.post("/v1/models/tiny-blip/load").status_code == 200
        pid = c.get("/v1/models").json()["worker_pid"]
    assert pid
    return pid


def test_a_stopped_worker_makes_the_service_and_the_gateway_not_ready_until_it_runs_again(
        stack: tuple[procs.Proc, procs.Proc]) -> None:
    svc, gw = stack
    pid = worker_pid(svc)
    assert httpx.get(svc.url + "/health/ready", timeout=5).status_code == 200
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        procs.wait_until(lambda: httpx.get(svc.url + "/health/ready", timeout=5).status_code == 503, SILENT_S + 10)
        took = time.monotonic() - t0
        r = httpx.get(svc.url + "/health/ready", timeout=5)
        body = r.json()
        assert body["error"]["code"] == "worker_unresponsive" and str(pid) in body["error"]["message"], body
        assert body["src"] == "caption-svc" and r.headers["retry-after"]
        g = httpx.get(gw.url + "/health/ready", timeout=10)
        assert g.status_code == 503, g.text
        assert "worker_unresponsive" in g.text or str(pid) in g.json()["services"]["caption"], g.text
        assert httpx.get(svc.url + "/health/live", timeout=5).status_code == 200  # the HTTP process itself answers
        print(f"readiness 503 {took:.1f} s after SIGSTOP (worker_silent_s={SILENT_S})")
        assert took <= SILENT_S + 5
    finally:
        os.kill(pid, signal.SIGCONT)
    procs.wait_until(lambda: httpx.get(svc.url + "/health/ready", timeout=5).status_code == 200, 10)
    procs.wait_until(lambda: httpx.get(gw.url + "/health/ready", timeout=10).status_code == 200, 10)


def test_a_worker_busy_for_longer_than_worker_silent_s_is_not_taken_for_hung(stack: tuple[procs.Proc, procs.Proc]) -> None:
    """The worker's model thread is kept busy well past ``worker_silent_s`` by a stream of inferences (each
    model has one thread, so they run back to back); readiness stays 200 throughout."""
    svc, _ = stack
    worker_pid(svc)
    stop = threading.Event()
    done: list[int] = []

    def caption() -> None:
        with httpx.Client(base_url=svc.url, headers=procs.INTERNAL_HEADERS, timeout=120) as c:
            while not stop.is_set():
                r = c.post("/v1/captions", files={"file": ("a.jpg", jpeg())},
                           data={"model": "tiny-blip", "max_new_tokens": "64"})
                done.append(r.status_code)

    threads = [threading.Thread(target=caption, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 2.5 * SILENT_S
        while time.monotonic() < deadline:
            seen.append(httpx.get(svc.url + "/health/ready", timeout=5).status_code)
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert done and set(done) == {200}, done[:10]
    assert set(seen) == {200}, seen
