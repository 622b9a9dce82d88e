"""Model management through the gateway, with real processes on loopback: the gateway, caption-svc, and a
stand-in for the Hugging Face Hub (``tests/doubles/hf_hub_server.py``) serving the tiny BLIP as a repo at a
watched rate. Nothing leaves the machine.

Covered: a pull streams progress (bytes, total, rate, ETA) as server-sent events until done, and the pulled
weights caption; ``/admin/models`` shows cached and size on disk; a preload model is loaded at start-up with
no request; the cache delete is 409 while loaded and frees the weights once unloaded; a request for a model
whose weights are gone pulls them first; ``roundhouse models pull | ls | rm``; a repo the hub does not have,
and a hub that cannot be reached, fail within seconds with the reason.

A ``url`` pull through the gateway too, with face-svc: an insightface pack (the tiny pack zipped, served by the
same stand-in hub at the catalog's ``url``) streams progress, lands where the load reads it (a detect then
fetches nothing), is pulled again before the load of a request once deleted, and a sha256 that does not match
fails with the reason and leaves nothing behind."""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests import procs
from tests.conftest import image_bytes
from tests.face_fixtures import face_catalog, square_png  # noqa: F401 - a fixture

pytestmark = pytest.mark.proc

RATE = 50_000  # bytes a second per file: the 236 kB of weights take about 5 s, long enough to watch (at 100 kB/s, 2.5 s,
# a loaded machine once saw three progress events and no rate among them)
TIMEOUT = httpx.Timeout(60.0)


@pytest.fixture(scope="module")
def world(tiny_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("pull")
    logdir = tmp / "logs"
    logdir.mkdir()
    tiny_blip = tiny_catalog.parent / "tiny-blip"
    hub_port = procs.free_port()
    hub = procs.start("hf-hub", [str(procs.GATEWAY_PY), "-m", "tests.doubles.hf_hub_server", "--port", str(hub_port),
                                 "--repo", f"roundhouse-test/tiny-blip={tiny_blip}", "--rate", str(RATE)],
                      {}, hub_port, logdir, ready_path="/health")
    catalog = tmp / "models.yaml"
    common = "family: caption, backend: blip, device: cpu, memory_estimate_mb: 64, max_batch: 1, options: {max_new_tokens: 8}"
    catalog.write_text(
        "models:\n"
        f"  - {{id: hub-blip, source: roundhouse-test/tiny-blip, {common}}}\n"
        f"  - {{id: local-blip, source: {tiny_blip}, preload: true, {common}}}\n"
        f"  - {{id: missing-blip, source: roundhouse-test/no-such-repo, {common}}}\n")
    port = procs.free_port()
    cache = tmp / "cache"
    svc = procs.start("caption-svc", [str(procs.CAPTION_PY), "-m", "caption_svc"],
                      {"CAPTION_SVC_CATALOG": str(catalog), "CAPTION_SVC_PORT": str(port), "CAPTION_SVC_CACHE_DIR": str(cache),
                       "CAPTION_SVC_SPARE_WORKER": "false", "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"},
                      port, logdir)
    gw = procs.start_gateway(catalog, {"caption": svc.url}, logdir)
    try:
        yield {"gw": gw, "svc": svc, "hub": hub, "cache": cache, "tiny_blip": tiny_blip}
    finally:
        for p in (gw, svc, hub):
            p.stop()


def sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    event = None
    for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            yield event or "message", json.loads(line[5:])


def admin_rows(gw: procs.Proc) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in httpx.get(gw.url + "/admin/models", timeout=TIMEOUT).json()["data"]}


def hub_bodies(hub: procs.Proc) -> int:
    return httpx.get(hub.url + "/test/requests").json()["bodies"]


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def test_preload_model_is_loaded_at_start_up_without_a_request(world: dict[str, Any]) -> None:
    procs.wait_until(lambda: admin_rows(world["gw"])["local-blip"]["state"] == "ready", 120, 0.2)
    row = admin_rows(world["gw"])["local-blip"]
    assert row["preload"] is True and row["ledger_state"] == "ready"
    assert row["cached"] is True and row["size_on_disk_bytes"] == weights_bytes(world["tiny_blip"])
    assert admin_rows(world["gw"])["hub-blip"]["state"] == "unloaded"  # not a preload model


def test_pull_streams_progress_until_done_and_the_weights_caption(world: dict[str, Any]) -> None:
    gw, hub = world["gw"], world["hub"]
    assert admin_rows(gw)["hub-blip"]["cached"] is False
    total = weights_bytes(world["tiny_blip"])
    t0 = time.monotonic()
    with httpx.stream("POST", gw.url + "/admin/models/hub-blip/pull", headers={"Accept": "text/event-stream"},
                      timeout=TIMEOUT) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = list(sse(r.iter_lines()))
    elapsed = time.monotonic() - t0
    kinds = [k for k, _ in events]
    assert kinds[-1] == "end" and set(kinds[:-1]) == {"progress"}, kinds
    end = events[-1][1]
    assert end["state"] == "done" and end["kind"] == "hub" and end["bytes_done"] == end["bytes_total"] == total
    assert end["cached"] is True and end["size_on_disk_bytes"] == total
    during = [s for k, s in events if k == "progress" and s["state"] == "pulling"]
    assert len(during) >= 2, f"{len(during)} progress event(s) in {elapsed:.1f} s"
    print(f"\npull of {total} bytes at {RATE} B/s a file: {elapsed:.2f} s, {len(during)} progress events")
    done = [s["bytes_done"] for s in during]
    assert done == sorted(done) and 0 < max(done) <= total
    assert any(s["rate_bytes_per_s"] for s in during) and any(s["eta_s"] is not None for s in during)
    assert hub_bodies(hub) == 6
    row = admin_rows(gw)["hub-blip"]
    assert row["cached"] is True and row["size_on_disk_bytes"] == total and row["state"] == "unloaded"

    r = httpx.post(gw.url + "/v1/images/captions", data={"model": "hub-blip"},
                   files={"file": ("a.jpg", image_bytes(), "image/jpeg")}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert hub_bodies(hub) == 6  # the load read the cache: nothing fetched again


def test_polled_pull_of_a_local_source_verifies_it(world: dict[str, Any]) -> None:
    r = httpx.post(world["gw"].url + "/admin/models/local-blip/pull", timeout=TIMEOUT)
    assert r.status_code == 200
    procs.wait_until(lambda: httpx.get(world["gw"].url + "/admin/models/local-blip/pull").json()["state"] == "done", 10)
    s = httpx.get(world["gw"].url + "/admin/models/local-blip/pull").json()
    assert s["kind"] == "local" and s["bytes_done"] == s["bytes_total"] == weights_bytes(world["tiny_blip"])


def test_cache_delete_is_409_while_loaded_then_frees_the_weights(world: dict[str, Any]) -> None:
    gw = world["gw"]
    assert httpx.post(gw.url + "/admin/models/hub-blip/load", timeout=TIMEOUT).status_code == 200
    r = httpx.delete(gw.url + "/admin/models/hub-blip/cache", timeout=TIMEOUT)
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_loaded"
    assert httpx.post(gw.url + "/admin/models/hub-blip/unload", timeout=TIMEOUT).status_code == 200
    r = httpx.delete(gw.url + "/admin/models/hub-blip/cache", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["freed_bytes"] == weights_bytes(world["tiny_blip"])
    assert not (world["cache"] / "models--roundhouse-test--tiny-blip").exists()
    assert admin_rows(gw)["hub-blip"]["cached"] is False
    # A local source is never deleted: refused while loaded (as any model), and when unloaded too.
    r = httpx.delete(gw.url + "/admin/models/local-blip/cache", timeout=TIMEOUT)
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_loaded"
    assert httpx.post(gw.url + "/admin/models/local-blip/unload", timeout=TIMEOUT).status_code == 200
    r = httpx.delete(gw.url + "/admin/models/local-blip/cache", timeout=TIMEOUT)
    assert r.status_code == 409 and r.json()["error"]["code"] == "cache_not_ours"
    assert world["tiny_blip"].is_dir()


def test_a_request_for_a_model_whose_weights_are_gone_pulls_them_first(world: dict[str, Any]) -> None:
    gw, hub = world["gw"], world["hub"]
    before = hub_bodies(hub)
    r = httpx.post(gw.url + "/v1/images/captions", data={"model": "hub-blip"},
                   files={"file": ("a.jpg", image_bytes(), "image/jpeg")}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert hub_bodies(hub) == before + 6
    assert "weights not cached; pulling them before its load" in world["gw"].log_tail(20000)


def test_cli_models_ls_pull_rm(world: dict[str, Any]) -> None:
    gw = world["gw"]
    exe = [str(procs.GATEWAY_PY), "-m", "gateway.cli", "--url", gw.url, "models"]
    ls = subprocess.run(exe + ["ls"], capture_output=True, text=True, timeout=60)
    assert ls.returncode == 0, ls.stderr
    head, *lines = ls.stdout.splitlines()
    assert head.split() == ["ID", "FAMILY", "STATE", "CACHED", "SIZE"]
    hub_line = next(line for line in lines if line.startswith("hub-blip "))
    assert hub_line.split()[1:4] == ["caption", "ready", "yes"] and hub_line.endswith("kB")

    assert httpx.post(gw.url + "/admin/models/hub-blip/unload", timeout=TIMEOUT).status_code == 200
    rm = subprocess.run(exe + ["rm", "hub-blip"], capture_output=True, text=True, timeout=60)
    assert rm.returncode == 0 and "hub-blip: deleted" in rm.stderr, rm.stderr
    pull = subprocess.run(exe + ["pull", "hub-blip"], capture_output=True, text=True, timeout=60)
    assert pull.returncode == 0, pull.stderr
    assert "hub-blip [" in pull.stderr and "hub-blip: pulled" in pull.stderr and "on disk" in pull.stderr
    assert admin_rows(gw)["hub-blip"]["cached"] is True


def test_a_repo_the_hub_does_not_have_fails_with_the_reason(world: dict[str, Any]) -> None:
    gw = world["gw"]
    t0 = time.monotonic()
    r = httpx.post(gw.url + "/admin/models/missing-blip/pull?stream=true", timeout=TIMEOUT)
    end = [s for k, s in sse(iter(r.text.splitlines())) if k == "end"][0]
    assert end["state"] == "failed" and "roundhouse-test/no-such-repo" in end["error"], end
    assert time.monotonic() - t0 < 10
    cli = subprocess.run([str(procs.GATEWAY_PY), "-m", "gateway.cli", "--url", gw.url, "models", "pull", "missing-blip"],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1 and "pull of missing-blip failed" in cli.stderr


def test_an_unreachable_hub_fails_within_seconds_and_a_load_says_why(world: dict[str, Any]) -> None:
    gw = world["gw"]
    world["hub"].stop()
    assert httpx.post(gw.url + "/admin/models/hub-blip/unload", timeout=TIMEOUT).status_code == 200
    assert httpx.delete(gw.url + "/admin/models/hub-blip/cache", timeout=TIMEOUT).status_code == 200  # forgets it
    t0 = time.monotonic()
    r = httpx.post(gw.url + "/v1/images/captions", data={"model": "hub-blip"},
                   files={"file": ("a.jpg", image_bytes(), "image/jpeg")}, timeout=TIMEOUT)
    elapsed = time.monotonic() - t0
    assert r.status_code == 502 and r.json()["error"]["code"] == "pull_failed", r.text
    assert "refused the connection" in r.json()["error"]["message"]
    assert elapsed < 10, f"took {elapsed:.1f} s"
    print(f"\nunreachable hub: the request failed in {elapsed:.2f} s")


# -- a url pull: an insightface pack through face-svc ----------------------------------------------------------

PACK_RATE = 20_000  # bytes a second: the tiny pack's zip (about 75 kB with its licence) takes a few seconds


@pytest.fixture(scope="module")
def pack_world(face_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:  # noqa: F811
    from modelhost.catalog import load_catalog

    tmp = tmp_path_factory.mktemp("pack-pull")
    logdir = tmp / "logs"
    logdir.mkdir()
    tiny = load_catalog(face_catalog).get("tiny-insightface")
    www = tmp / "packs"
    www.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(Path(tiny.source).iterdir()):
            zf.write(f, f"tinypack/{f.name}")
        zf.writestr("tinypack/LICENSE", random.Random(0).randbytes(60_000))  # not kept: only .onnx files are
    (www / "tinypack.zip").write_bytes(buf.getvalue())
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    hub_port = procs.free_port()
    hub = procs.start("hf-hub-packs", [str(procs.GATEWAY_PY), "-m", "tests.doubles.hf_hub_server", "--port",
                                       str(hub_port), "--repo", f"roundhouse-test/packs={www}", "--rate", str(PACK_RATE)],
                      {}, hub_port, logdir, ready_path="/health")
    url = f"{hub.url}/roundhouse-test/packs/resolve/main/tinypack.zip"
    options = json.dumps({**tiny.options, "url": url, "sha256": sha})
    common = "family: face, backend: insightface, device: cpu, dtype: float32, memory_estimate_mb: 64"
    catalog = tmp / "models.yaml"
    catalog.write_text(
        "models:\n"
        f"  - {{id: pulled-pack, source: tinypack, {common}, options: {options}}}\n"
        f"  - {{id: bad-pack, source: badpack, {common}, options: {json.dumps({**tiny.options, 'url': url, 'sha256': '0' * 64})}}}\n")
    cache = tmp / "cache"
    svc = procs.start_face_svc(catalog, logdir, cache_dir=str(cache), spare_worker="false")
    gw = procs.start_gateway(catalog, {"face": svc.url}, logdir, name="gateway-packs",
                             data_dir=str(tmp / "gateway-data"))
    try:
        yield {"gw": gw, "hub": hub, "cache": cache, "zip": len(buf.getvalue()),
               "onnx": sum(f.stat().st_size for f in Path(tiny.source).iterdir())}
    finally:
        for p in (gw, svc, hub):
            p.stop()


def detect(gw: procs.Proc, model: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/faces/detect", data={"model": model}, files={"file": ("a.png", square_png())},
                      timeout=TIMEOUT)


def test_pack_pull_streams_progress_and_the_load_reads_what_it_fetched(pack_world: dict[str, Any]) -> None:
    gw, hub = pack_world["gw"], pack_world["hub"]
    assert admin_rows(gw)["pulled-pack"]["cached"] is False
    with httpx.stream("POST", gw.url + "/admin/models/pulled-pack/pull", headers={"Accept": "text/event-stream"},
                      timeout=TIMEOUT) as r:
        assert r.status_code == 200
        events = list(sse(r.iter_lines()))
    end = events[-1][1]
    assert events[-1][0] == "end" and end["state"] == "done" and end["kind"] == "url", end
    assert end["bytes_done"] == end["bytes_total"] == pack_world["zip"]
    assert end["cached"] is True and end["size_on_disk_bytes"] == pack_world["onnx"]
    during = [s for k, s in events if k == "progress" and s["state"] == "pulling"]
    assert len(during) >= 2 and any(s["rate_bytes_per_s"] for s in during) and any(s["eta_s"] for s in during), during
    folder = pack_world["cache"] / "insightface" / "tinypack"
    assert sorted(p.name for p in folder.iterdir()) == ["det_tiny.onnx", "w600k_tiny.onnx"]
    assert hub_bodies(hub) == 1
    print(f"\npack pull of {end['bytes_total']} bytes at {PACK_RATE} B/s: {len(during)} progress events")

    r = detect(gw, "pulled-pack")
    assert r.status_code == 200 and len(r.json()["faces"]) == 1, r.text
    assert hub_bodies(hub) == 1  # the load read the pulled pack


def test_a_deleted_pack_is_pulled_again_before_the_load_of_a_request(pack_world: dict[str, Any]) -> None:
    gw, hub = pack_world["gw"], pack_world["hub"]
    assert httpx.post(gw.url + "/admin/models/pulled-pack/unload", timeout=TIMEOUT).status_code == 200
    r = httpx.delete(gw.url + "/admin/models/pulled-pack/cache", timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["freed_bytes"] == pack_world["onnx"], r.text
    assert not (pack_world["cache"] / "insightface" / "tinypack").exists()
    before = hub_bodies(hub)
    r = detect(gw, "pulled-pack")
    assert r.status_code == 200, r.text
    assert hub_bodies(hub) == before + 1
    assert "weights not cached; pulling them before its load" in gw.log_tail(20000)


def test_a_pack_whose_sha256_differs_fails_with_the_reason_and_leaves_nothing(pack_world: dict[str, Any]) -> None:
    gw = pack_world["gw"]
    r = httpx.post(gw.url + "/admin/models/bad-pack/pull?stream=true", timeout=TIMEOUT)
    end = [s for k, s in sse(iter(r.text.splitlines())) if k == "end"][0]
    assert end["state"] == "failed" and "sha256" in end["error"] and "0" * 64 in end["error"], end
    assert sorted(p.name for p in (pack_world["cache"] / "insightface").iterdir()) == ["tinypack"]
