"""External tenants for real: the gateway, face-svc and a stand-in LLM server (Ollama's or llama-swap's HTTP
API, ``tests/doubles``) as processes on loopback, sharing one GPU: the host-backed fake NVML, where every
CUDA process's resident set is its device memory (the face worker's, and the LLM server's runner that
holds its model's bytes).

The budget holds the face model or the LLM, never both, so every switch between them is an eviction: of
the LLM through its server's API, of the face model through face-svc. A meter in the test samples the
fake NVML all along (as the coordinator's own meter reads it) and records which of them held memory at
each reading; the LLM and the face worker must never both be on the card.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import psutil
import pytest

from tests import procs
from tests.doubles import fake_nvml_host
from tests.face_fixtures import face_catalog, square_png  # noqa: F401 - a fixture

pytestmark = pytest.mark.proc

MiB = 2**20
LLM_BYTES = 150 * MiB  # the LLM's model on the card (its server's size_vram)
# The face model (64 MiB estimated; its worker measures about 70 MiB here) fits, the LLM fits, both do not.
BUDGET_MB = 180
FACE = "tiny-insightface"
OLLAMA_NAME, SWAP_NAME = "llama3.1:8b", "qwen2.5-vl"
LLM = "llama3.1"  # the id clients use at the gateway
TIMEOUT_S = 120


# the meter ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reading:
    t: float  # time.time()
    used_bytes: int
    llm_bytes: int  # held by the LLM server's runners
    worker_bytes: int  # held by our model workers


class Meter:
    """Reads the fake NVML the stack shares every 20 ms, in a thread: the GPU's used bytes and which CUDA
    processes hold them (an LLM server's runner, or one of our model workers)."""

    def __init__(self) -> None:
        self.nvml = fake_nvml_host.from_env()
        self.nvml.nvmlInit()
        self.gpu = self.nvml.gpus[self.nvml._tenant_gpu]  # the card the stack's processes are on
        self.readings: list[Reading] = []
        self._kinds: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _kind(self, pid: int) -> str:
        if pid not in self._kinds:
            try:
                cmdline = " ".join(psutil.Process(pid).cmdline())
            except psutil.Error:
                return "gone"
            self._kinds[pid] = "llm" if "llm_runner" in cmdline else "worker"
        return self._kinds[pid]

    def read(self) -> Reading:
        self.nvml._scanned = float("-inf")  # a fresh scan of the process table at every reading
        held = {"llm": 0, "worker": 0, "gone": 0}
        for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.gpu):
            held[self._kind(p.pid)] += p.usedGpuMemory or 0
        return Reading(time.time(), self.nvml.nvmlDeviceGetMemoryInfo(self.gpu).used, held["llm"], held["worker"])

    def _run(self) -> None:
        while not self._stop.is_set():
            self.readings.append(self.read())
            self._stop.wait(0.02)

    def stop(self) -> list[Reading]:
        self._stop.set()
        self._thread.join(5)
        return self.readings


def assert_never_both(readings: list[Reading]) -> None:
    both = [r for r in readings if r.llm_bytes and r.worker_bytes]
    assert not both, f"{len(both)} of {len(readings)} readings showed the LLM and a model worker at once: {both[:3]}"


# the stack ---------------------------------------------------------------------------------------------------

@dataclass
class Stack:
    gateway: procs.Proc
    face: procs.Proc
    llm: procs.Proc | None
    env: dict[str, str]
    meter: Meter

    def calls(self) -> list[dict]:
        return httpx.get(self.llm.url + "/_calls", timeout=10).json()["calls"]

    def resident(self) -> dict:
        return httpx.get(self.gateway.url + "/admin/gpu", timeout=10).json()["devices"]["cuda:0"]["resident"]


def write_catalog(face_catalog: Path, out: Path, tenant: dict) -> Path:  # noqa: F811 - the fixture's path
    """The tiny face model on the card the LLM uses (the CPU runs it, as the rehearsal allows), and the tenant."""
    pack = (face_catalog.parent / "face" / "tiny-insightface").resolve()
    face = {"id": FACE, "family": "face", "backend": "insightface", "source": str(pack), "device": "cuda:0",
            "allow_cpu_fallback": True, "dtype": "float32", "memory_estimate_mb": 64, "max_batch": 4, "max_wait_ms": 5,
            "options": {"det_size": 320, "det_thresh": 0.5, "verify_threshold": 0.9, "threads": 1}}
    tenant = {"id": LLM, "family": "llm", "device": "cuda:0", "memory_estimate_mb": LLM_BYTES // MiB, **tenant}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "catalog.yaml"
    path.write_text(json.dumps({"models": [face, tenant]}, indent=1))  # JSON is YAML
    return path


def start_stack(face_catalog: Path, tmp_path: Path, logdir: Path, server: str, resident: bool,  # noqa: F811
                up: bool = True, **server_options: object) -> Stack:
    env = fake_nvml_host.write_spec(tmp_path / "fake-nvml.json")
    name, start = (OLLAMA_NAME, procs.start_ollama) if server == "ollama" else (SWAP_NAME, procs.start_llama_swap)
    port = procs.free_port()
    llm = None
    if up:
        llm = start({name: {"bytes": LLM_BYTES, "load_s": 0.2, "unload_s": 0.1}}, logdir, env, port=port,
                    resident=(name,) if resident else (), name=f"{server}-{port}", **server_options)
    catalog = write_catalog(face_catalog, tmp_path / "catalog",
                            {"backend": server, "source": name, "options": {"url": f"http://127.0.0.1:{port}"}})
    started: list[procs.Proc] = [llm] if llm else []
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            face = procs.start_face_svc(catalog, logdir, spare_worker="false",
                                        cache_dir=str(tmp_path / "face-cache"))
            started.append(face)
            gateway = procs.start_gateway(catalog, {"face": face.url}, logdir, name=f"gateway-{server}",
                                          memory_budget_mb=json.dumps({"cuda:0": BUDGET_MB}), reconcile_interval_s="1",
                                          data_dir=str(tmp_path / "gateway-data"))
            started.append(gateway)
            meter = Meter()
    except Exception:
        for p in reversed(started):
            p.stop()
        raise
    return Stack(gateway, face, llm, env, meter)


def stop_stack(stack: Stack) -> None:
    stack.meter.stop()
    for p in (stack.gateway, stack.face, stack.llm):
        if p is not None:
            p.stop()


@pytest.fixture()
def ollama_stack(face_catalog: Path, tmp_path: Path, logdir: Path) -> Iterator[Stack]:  # noqa: F811
    stack = start_stack(face_catalog, tmp_path, logdir, "ollama", resident=True)
    yield stack
    stop_stack(stack)


def detect(url: str) -> httpx.Response:
    return httpx.post(url + "/v1/faces/detect", files={"file": ("a.png", square_png())}, data={"model": FACE},
                      timeout=TIMEOUT_S)


def chat(url: str, text: str = "describe the photo", stream: bool = False) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=TIMEOUT_S,
                      json={"model": LLM, "messages": [{"role": "user", "content": text}], "stream": stream})


def unload_calls(calls: list[dict]) -> list[dict]:
    return [c for c in calls if c["path"] == "/api/generate" and (c["body"] or {}).get("keep_alive") == 0]


# the tests ---------------------------------------------------------------------------------------------------

def test_a_face_request_evicts_a_resident_ollama_model_through_its_api(ollama_stack: Stack) -> None:
    s = ollama_stack
    procs.wait_until(lambda: LLM in s.resident(), 30)  # reconciled at start: the LLM holds the card
    assert s.meter.read().llm_bytes >= LLM_BYTES

    r = detect(s.gateway.url)
    answered = time.time()

    assert r.status_code == 200, r.text
    assert len(r.json()["faces"]) == 1
    [unload] = unload_calls(s.calls())
    assert unload["body"]["model"] == OLLAMA_NAME and unload["t"] < answered
    assert httpx.get(s.llm.url + "/api/ps").json()["models"] == []
    readings = s.meter.stop()
    assert_never_both(readings)
    # Not vacuous: the meter saw the LLM on the card, then the face worker, and the worker only after the unload call.
    first_worker = next(r for r in readings if r.worker_bytes)
    assert readings[0].llm_bytes >= LLM_BYTES and first_worker.t > unload["t"]
    assert set(s.resident()) == {FACE}
    metrics = httpx.get(s.gateway.url + "/metrics").text
    assert f'roundhouse_coordinator_evictions_total{{model="{LLM}",reason="swap"}} 1.0' in metrics


def sse_text(r: httpx.Response) -> str:
    """The content of an OpenAI chat stream; it must end with ``data: [DONE]``."""
    events = [line[len("data: "):] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", r.text[-300:]
    return "".join(c["delta"].get("content") or "" for e in events[:-1] for c in json.loads(e)["choices"])


def test_chat_and_face_requests_sent_together_never_overlap_on_the_card(ollama_stack: Stack) -> None:
    s = ollama_stack
    httpx.post(s.llm.url + "/_faults", json={"token_s": 0.05}).raise_for_status()  # a chat takes a while
    procs.wait_until(lambda: LLM in s.resident(), 30)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for i in range(3):
            asked = pool.submit(chat, s.gateway.url, f"photo {i}", stream=i == 1)
            faces = pool.submit(detect, s.gateway.url)
            r_chat, r_face = asked.result(), faces.result()
            assert r_chat.status_code == 200, r_chat.text
            assert r_face.status_code == 200, r_face.text
            text = sse_text(r_chat) if i == 1 else r_chat.json()["choices"][0]["message"]["content"]
            assert text == f"The stand-in read: photo {i}"
            assert len(r_face.json()["faces"]) == 1
    readings = s.meter.stop()
    assert_never_both(readings)
    # Each request that found the other model on the card evicted it: the LLM through Ollama's API, the
    # face model through face-svc (its worker ended, and the meter saw the card change hands).
    assert unload_calls(s.calls())
    holders = [("llm" if r.llm_bytes else "face") for r in readings if r.llm_bytes or r.worker_bytes]
    changes = sum(a != b for a, b in zip(holders, holders[1:], strict=False))
    assert changes >= 2, holders


def test_a_face_request_evicts_a_llama_swap_model_through_its_api(face_catalog: Path, tmp_path: Path,  # noqa: F811
                                                                  logdir: Path) -> None:
    s = start_stack(face_catalog, tmp_path, logdir, "llama-swap", resident=True)
    try:
        procs.wait_until(lambda: LLM in s.resident(), 30)
        r = detect(s.gateway.url)
        answered = time.time()
        assert r.status_code == 200, r.text
        [unload] = [c for c in s.calls() if c["path"].startswith(("/api/models/unload", "/unload"))]
        assert (unload["method"], unload["path"]) == ("POST", f"/api/models/unload/{SWAP_NAME}")
        assert unload["t"] < answered
        assert httpx.get(s.llm.url + "/running").json()["running"] == []
        readings = s.meter.stop()
        assert_never_both(readings)
        assert readings[0].llm_bytes >= LLM_BYTES and next(r for r in readings if r.worker_bytes).t > unload["t"]
        # And back: a chat request for the LLM evicts the face model and llama-swap starts it again.
        r = chat(s.gateway.url)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "The stand-in read: describe the photo"
        assert set(s.resident()) == {LLM}
    finally:
        stop_stack(s)


def test_a_restarted_server_is_reconciled_and_the_next_chat_request_reloads_the_model(ollama_stack: Stack) -> None:
    s = ollama_stack
    procs.wait_until(lambda: LLM in s.resident(), 30)
    port = s.llm.port
    s.llm.stop()  # its runner goes with it: the model vanished from the card
    s.llm = procs.start_ollama({OLLAMA_NAME: {"bytes": LLM_BYTES, "load_s": 0.2}}, s.gateway.log.parent, s.env,
                               port=port, name=f"ollama-{port}-restarted")
    procs.wait_until(lambda: LLM not in s.resident(), 30)  # reconciled: the ledger no longer charges it

    r = chat(s.gateway.url)

    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "The stand-in read: describe the photo"
    assert [m["name"] for m in httpx.get(s.llm.url + "/api/ps").json()["models"]] == [OLLAMA_NAME]
    assert LLM in s.resident() and s.meter.read().llm_bytes >= LLM_BYTES
    assert_never_both(s.meter.stop())


def test_an_unreachable_server_is_a_clear_503_and_the_face_model_still_serves(face_catalog: Path, tmp_path: Path,  # noqa: F811
                                                                              logdir: Path) -> None:
    s = start_stack(face_catalog, tmp_path, logdir, "ollama", resident=False, up=False)
    try:
        for _ in range(2):  # and again: nothing was left half-done by the first
            r = httpx.post(s.gateway.url + "/v1/chat/completions", timeout=30,  # a hang fails here
                           json={"model": LLM, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 503, r.text
            body = r.json()
            assert set(body) == {"src", "request_id", "error"} and body["error"]["code"] == "service_unavailable"
            assert body["error"]["message"] and r.headers["x-request-id"] == body["request_id"]
        r = detect(s.gateway.url)
        assert r.status_code == 200, r.text
        assert len(r.json()["faces"]) == 1
    finally:
        stop_stack(s)


def test_a_face_request_waits_for_a_streaming_chat_to_end(ollama_stack: Stack) -> None:
    s = ollama_stack
    httpx.post(s.llm.url + "/_faults", json={"token_s": 0.1}).raise_for_status()
    procs.wait_until(lambda: LLM in s.resident(), 30)
    body = {"model": LLM, "messages": [{"role": "user", "content": "a b c d e"}], "stream": True}
    with httpx.stream("POST", s.gateway.url + "/v1/chat/completions", json=body, timeout=TIMEOUT_S) as r, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # the stream has begun: the LLM is busy
        faces = pool.submit(detect, s.gateway.url)
        rest = [line for line in lines if line]
        last_chunk = time.time()
        assert rest[-1] == "data: [DONE]" and not faces.done()
        r_face = faces.result()
    assert r_face.status_code == 200, r_face.text
    readings = s.meter.stop()
    assert_never_both(readings)
    # The face worker came only after the stream's last chunk: the lease was held to the end.
    assert next(x for x in readings if x.worker_bytes).t > last_chunk


def test_a_slow_release_is_waited_for_not_slept_over(ollama_stack: Stack) -> None:
    """Ollama answers ``keep_alive: 0`` at once and frees the memory after; here 1.5 s after. The face
    model is loaded only once the release shows, in the server's residency and on the meter."""
    s = ollama_stack
    httpx.post(s.llm.url + "/_faults", json={"unload_s": 1.5}).raise_for_status()
    procs.wait_until(lambda: LLM in s.resident(), 30)

    r = detect(s.gateway.url)

    assert r.status_code == 200, r.text
    [unload] = unload_calls(s.calls())
    readings = s.meter.stop()
    assert_never_both(readings)
    llm_gone = next(x for x in readings if x.t > unload["t"] and not x.llm_bytes)
    assert llm_gone.t >= unload["t"] + 1.5  # the release really was slow ...
    assert next(x for x in readings if x.worker_bytes).t > llm_gone.t  # ... and the face worker came after it


def test_an_older_llama_swap_is_evicted_with_get_unload(face_catalog: Path, tmp_path: Path,  # noqa: F811
                                                        logdir: Path) -> None:
    s = start_stack(face_catalog, tmp_path, logdir, "llama-swap", resident=True, api_unload=False)
    try:
        procs.wait_until(lambda: LLM in s.resident(), 30)
        r = detect(s.gateway.url)
        assert r.status_code == 200, r.text
        tried, unload = [(c["method"], c["path"]) for c in s.calls() if "unload" in c["path"]]
        assert tried == ("POST", f"/api/models/unload/{SWAP_NAME}") and unload == ("GET", "/unload")
        assert httpx.get(s.llm.url + "/running").json()["running"] == []
        readings = s.meter.stop()
        assert_never_both(readings)
        assert readings[0].llm_bytes >= LLM_BYTES and any(r.worker_bytes for r in readings)
    finally:
        stop_stack(s)


def test_a_server_that_answers_its_unload_but_keeps_the_model_gets_the_face_request_a_503_not_a_hang(
        ollama_stack: Stack) -> None:
    """The server says the LLM is unloaded and keeps it (the stand-in's ``ignore_unload``). The face request
    had its one eviction: the release was not verified, the re-read found the LLM still loaded, and the
    request is refused 503 with a Retry-After naming what holds the card, instead of the same eviction
    every release_timeout_s until its deadline (300 s; the client here gives up after 60 s). Once the
    server behaves, the next face request evicts the LLM and is served."""
    s = ollama_stack
    procs.wait_until(lambda: LLM in s.resident(), 30)
    httpx.post(s.llm.url + "/_faults", json={"ignore_unload": True}).raise_for_status()

    r = httpx.post(s.gateway.url + "/v1/faces/detect", files={"file": ("a.png", square_png())}, data={"model": FACE},
                   timeout=60)  # a hang fails here (ReadTimeout)

    assert r.status_code == 503, r.text
    body = r.json()
    assert set(body) == {"src", "request_id", "error"} and body["error"]["code"] == "model_not_ready"
    assert float(r.headers["retry-after"]) > 0
    assert LLM in body["error"]["message"] and "did not release its memory" in body["error"]["message"]
    assert len(unload_calls(s.calls())) == 1  # asked once for this request, not again and again
    assert httpx.get(s.gateway.url + "/health/ready", timeout=10).status_code == 200  # the gateway is up
    assert LLM in s.resident() and [m["name"] for m in httpx.get(s.llm.url + "/api/ps").json()["models"]] == [OLLAMA_NAME]

    httpx.post(s.llm.url + "/_faults", json={"ignore_unload": False}).raise_for_status()
    r = detect(s.gateway.url)
    assert r.status_code == 200, r.text
    assert len(r.json()["faces"]) == 1
    assert httpx.get(s.llm.url + "/api/ps").json()["models"] == []
    assert_never_both(s.meter.stop())
