"""A catalog that puts models on cuda:0, on a box without a GPU: the real gateway and the real tts-svc on
loopback, with a fake NVML (the hardware boundary) that sees no GPU at all.

The stack starts; the cuda:0 models are listed ``unavailable`` with the reason and refused at once; the CPU
models serve. With the override (``GATEWAY_FORCE_DEVICE=cpu`` and ``TTS_SVC_FORCE_DEVICE=cpu``, what
``make dev FORCE_DEVICE=cpu`` and compose.cpu.yml set) every model runs on the CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

from tests import procs
from tests.doubles import fake_nvml_host
from tests.tts_fixtures import decode, tts_catalog  # noqa: F401

pytestmark = pytest.mark.proc

NO_GPU = {"driver_version": "580.95.05", "cuda_driver_version": 13000, "gpus": []}
ON_GPU = "espeak-ng"  # the catalog asks for cuda:0


@pytest.fixture(scope="module")
def mixed_catalog(tts_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    raw = yaml.safe_load(tts_catalog.read_text())
    for m in raw["models"]:
        if m["id"] == ON_GPU:
            m["device"] = "cuda:0"
        src = Path(tts_catalog.parent, m["source"])
        if m["source"].startswith("./") and src.exists():
            m["source"] = str(src)
    assert any(m["device"] == "cpu" for m in raw["models"])
    path = tmp_path_factory.mktemp("cpu-box") / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start_stack(catalog: Path, logdir: Path, nvml_env: dict[str, str], name: str,
                force_device: str | None = None) -> tuple[procs.Proc, procs.Proc]:
    svc_env = {"TTS_SVC_CATALOG": str(catalog), "TTS_SVC_PORT": str(svc_port := procs.free_port()), **nvml_env}
    gw_env = {"GATEWAY_CATALOG": str(catalog), "GATEWAY_PORT": str(gw_port := procs.free_port()),
              "GATEWAY_DATA_DIR": str(logdir / f"{name}-data"), **nvml_env}
    if force_device:
        svc_env["TTS_SVC_FORCE_DEVICE"] = gw_env["GATEWAY_FORCE_DEVICE"] = force_device
    svc = procs.start(f"{name}-tts-svc", [str(procs.TTS_PY), "-m", "tts_svc"], svc_env, svc_port, logdir)
    gw_env["GATEWAY_SERVICES"] = json.dumps({"tts": svc.url})
    try:
        gw = procs.start(f"{name}-gateway", [str(procs.GATEWAY_PY), "-m", "gateway"], gw_env, gw_port, logdir)
    except Exception:
        svc.stop()
        raise
    return gw, svc


@pytest.fixture(scope="module")
def nvml_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return fake_nvml_host.write_spec(tmp_path_factory.mktemp("nvml") / "no-gpu.json", NO_GPU)


@pytest.fixture(scope="module")
def cpu_box(mixed_catalog: Path, logdir: Path, nvml_env: dict[str, str]) -> Iterator[procs.Proc]:
    gw, svc = start_stack(mixed_catalog, logdir, nvml_env, "cpu-box")
    yield gw
    gw.stop()
    svc.stop()


def speak(gw: procs.Proc, model: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/audio/speech", json={"model": model, "input": "Hello there.", "voice": "alloy",
                                                         "response_format": "wav"}, timeout=120)


def test_the_stack_starts_and_lists_the_cuda_models_as_unavailable_with_the_reason(cpu_box: procs.Proc) -> None:
    rows = {m["id"]: m for m in httpx.get(cpu_box.url + "/admin/models", timeout=30).json()["data"]}
    gpu = rows[ON_GPU]
    assert gpu["state"] == "unavailable" and gpu["ledger_state"] == "unavailable"
    assert "cuda:0" in gpu["reason"] and "no such GPU" in gpu["reason"] and "FORCE_DEVICE=cpu" in gpu["reason"]
    assert all(m["state"] != "unavailable" for i, m in rows.items() if i != ON_GPU)
    ledger = httpx.get(cpu_box.url + "/admin/gpu", timeout=30).json()["devices"]
    assert list(ledger) == ["cpu"]


def test_the_cpu_models_serve(cpu_box: procs.Proc) -> None:
    r = speak(cpu_box, "flite")
    assert r.status_code == 200, r.text
    x, rate = decode(r.content)
    assert len(x) > 0.2 * rate


def test_a_cuda_model_is_refused_at_once_with_the_reason(cpu_box: procs.Proc) -> None:
    for call in (lambda: speak(cpu_box, ON_GPU), lambda: httpx.post(f"{cpu_box.url}/admin/models/{ON_GPU}/load", timeout=30)):
        t0 = time.monotonic()
        r = call()
        assert time.monotonic() - t0 < 10
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["src"] == "gateway" and body["error"]["code"] == "model_unavailable"
        assert "no such GPU" in body["error"]["message"]
    unload = httpx.post(f"{cpu_box.url}/admin/models/{ON_GPU}/unload", timeout=30)
    assert unload.status_code == 200 and unload.json()["was_resident"] is False


def test_the_override_runs_every_model_on_the_cpu(mixed_catalog: Path, logdir: Path, nvml_env: dict[str, str]) -> None:
    gw, svc = start_stack(mixed_catalog, logdir, nvml_env, "forced-cpu", force_device="cpu")
    try:
        rows = {m["id"]: m for m in httpx.get(gw.url + "/admin/models", timeout=30).json()["data"]}
        assert all(m["state"] != "unavailable" for m in rows.values()), rows
        r = speak(gw, ON_GPU)
        assert r.status_code == 200, r.text
        row = next(m for m in httpx.get(gw.url + "/admin/models", timeout=30).json()["data"] if m["id"] == ON_GPU)
        assert row["state"] == "ready" and row["device"] == "cpu"
    finally:
        gw.stop()
        svc.stop()
