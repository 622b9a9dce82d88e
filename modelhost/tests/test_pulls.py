"""Pulls through the model host API (``create_host_app`` with a test family, its real runtime and worker): a
local source's pull verifies its files with progress, a hub source that cannot be reached fails within
seconds with the reason, offline fails at once, the cache is deleted only when unloaded, and the model rows
say what is cached and its size on disk."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from modelhost.app import Family, create_host_app
from modelhost.catalog import Catalog, ModelSpec
from modelhost.meter import HostMeter
from modelhost.pulls import probe, weights_of
from modelhost.settings import HostSettings

pytestmark = pytest.mark.app

DEADLINE_S = 10.0
ARITH = "tests.doubles.arithmetic:ArithmeticBackend"
# "blip" loads through the hub: a model of that backend named by a repo id is pulled from the hub.
FAMILY = Family(name="arith", service="arith-svc", backends={"arith": ARITH, "blip": ARITH, "pocketsphinx": ARITH})


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    d = tmp_path / "weights"
    d.mkdir()
    (d / "config.json").write_text('{"hidden": 4}')
    (d / "model.bin").write_bytes(b"\x01" * 300_000)
    return d


def catalog(weights: Path) -> Catalog:
    return Catalog(models=[
        ModelSpec(id="local", family="arith", backend="arith", source=str(weights)),
        ModelSpec(id="hubby", family="arith", backend="blip", source="org/tiny-model"),
        ModelSpec(id="packaged", family="arith", backend="pocketsphinx", source="en-us"),
        ModelSpec(id="self-fetching", family="arith", backend="arith", source="some-name"),
    ])


@pytest.fixture
def app(tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return create_host_app(FAMILY, HostSettings(cache_dir=tmp_path / "cache"), catalog(weights), meter=HostMeter())


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://arith-svc", timeout=DEADLINE_S) as c:
            yield c


async def pulled(client: httpx.AsyncClient, name: str, deadline_s: float = DEADLINE_S) -> dict[str, Any]:
    """Start a pull and poll its progress until it ends; the final status."""
    r = await client.post(f"/v1/models/{name}/pull")
    assert r.status_code == 200, r.text
    end = time.monotonic() + deadline_s
    while True:
        s = (await client.get(f"/v1/models/{name}/pull")).json()
        if s["state"] in ("done", "failed"):
            return s
        assert time.monotonic() < end, f"pull of {name} still {s['state']} after {deadline_s} s"
        await asyncio.sleep(0.02)


def complete_download(folder: Path) -> Path:
    """A complete download of 5000 bytes in the hub's layout, as a pull or a first load leaves it."""
    (folder / "blobs").mkdir(parents=True)
    (folder / "blobs" / "abc").write_bytes(b"w" * 5000)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("c0ffee")
    (folder / "snapshots" / "c0ffee").mkdir(parents=True)
    (folder / "snapshots" / "c0ffee" / "model.bin").symlink_to(folder / "blobs" / "abc")
    return folder


def rows(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in body["data"]}


async def test_local_source_pull_verifies_files_and_reports_their_size(client: httpx.AsyncClient) -> None:
    s = await pulled(client, "local")
    assert s["state"] == "done" and s["kind"] == "local" and s["error"] is None
    size = 300_000 + len('{"hidden": 4}')
    assert s["bytes_done"] == s["bytes_total"] == size
    assert s["cached"] is True and s["size_on_disk_bytes"] == size and s["eta_s"] == 0.0


async def test_local_source_without_files_fails_saying_so(client: httpx.AsyncClient, weights: Path) -> None:
    for f in weights.iterdir():
        f.unlink()
    s = await pulled(client, "local")
    assert s["state"] == "failed" and "holds no files" in s["error"]


async def test_unreachable_hub_fails_within_seconds_with_the_reason(client: httpx.AsyncClient) -> None:
    t0 = time.monotonic()
    s = await pulled(client, "hubby")
    elapsed = time.monotonic() - t0
    assert s["state"] == "failed" and s["kind"] == "hub"
    assert "org/tiny-model" in s["error"] and "refused the connection" in s["error"], s["error"]
    assert elapsed < 5.0, f"the failure took {elapsed:.1f} s"
    assert s["cached"] is False


async def test_offline_hub_pull_fails_at_once(tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    app = create_host_app(FAMILY, HostSettings(cache_dir=tmp_path / "cache"), catalog(weights), meter=HostMeter())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x", timeout=5) as c:
            t0 = time.monotonic()
            s = await pulled(c, "hubby")
            assert time.monotonic() - t0 < 2.0
    assert s["state"] == "failed" and "HF_HUB_OFFLINE" in s["error"]

    # Offline with the weights cached: nothing to fetch, the pull is done.
    complete_download(tmp_path / "cache" / "models--org--tiny-model")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x", timeout=5) as c:
            s = await pulled(c, "hubby")
    assert s["state"] == "done" and s["cached"] is True and s["bytes_total"] == 0


async def test_models_list_cached_and_size_on_disk(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models")
    assert r.status_code == 200
    m = rows(r.json())
    assert m["local"]["cached"] is True and m["local"]["size_on_disk_bytes"] == 300_000 + 13
    assert m["hubby"]["cached"] is False and m["hubby"]["size_on_disk_bytes"] is None
    assert m["packaged"]["cached"] is True
    assert m["self-fetching"]["cached"] is None  # its backend fetches its own weights: the service cannot tell


async def test_pull_of_a_self_fetching_backend_is_409(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/self-fetching/pull")
    assert r.status_code == 409 and r.json()["error"]["code"] == "pull_unsupported"
    r = await client.post("/v1/models/nope/pull")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


async def test_delete_cache_removes_the_repo_folder_and_refuses_while_loaded(client: httpx.AsyncClient, app: FastAPI,
                                                                            tmp_path: Path) -> None:
    folder = complete_download(tmp_path / "cache" / "models--org--tiny-model")
    m = rows((await client.get("/v1/models")).json())
    assert m["hubby"]["cached"] is True and m["hubby"]["size_on_disk_bytes"] == 5000

    assert (await client.post("/v1/models/hubby/load")).status_code == 200
    r = await client.delete("/v1/models/hubby/cache")
    assert r.status_code == 409 and r.json()["error"]["code"] == "cache_in_use"
    assert folder.exists()

    assert (await client.post("/v1/models/hubby/unload")).status_code == 200
    r = await client.delete("/v1/models/hubby/cache")
    assert r.status_code == 200, r.text
    assert r.json()["freed_bytes"] == 5000 and not folder.exists()
    assert rows((await client.get("/v1/models")).json())["hubby"]["cached"] is False


async def test_delete_cache_never_removes_a_local_source(client: httpx.AsyncClient, weights: Path) -> None:
    r = await client.delete("/v1/models/local/cache")
    assert r.status_code == 409 and r.json()["error"]["code"] == "cache_not_ours"
    assert (weights / "model.bin").exists()


def test_an_interrupted_download_is_not_cached(tmp_path: Path) -> None:
    from modelhost.pulls import on_disk

    spec = ModelSpec(id="x", family="caption", backend="blip", source="org/m")
    w = weights_of(spec, tmp_path)
    (w.path / "blobs").mkdir(parents=True)
    (w.path / "blobs" / "abc.incomplete").write_bytes(b"w" * 10)
    (w.path / "refs").mkdir()
    (w.path / "refs" / "main").write_text("c0ffee")
    (w.path / "snapshots" / "c0ffee").mkdir(parents=True)
    (w.path / "snapshots" / "c0ffee" / "config.json").write_text("{}")
    assert on_disk(w) == (False, 10)


def test_faster_whisper_short_names_are_systran_repos(tmp_path: Path) -> None:
    spec = ModelSpec(id="x", family="asr", backend="faster_whisper", source="small")
    w = weights_of(spec, tmp_path)
    assert w.kind == "hub" and w.repo_id == "Systran/faster-whisper-small" and "model.bin" in w.allow_patterns
    assert w.path == tmp_path / "models--Systran--faster-whisper-small"


def test_probe_names_why_an_endpoint_cannot_be_reached() -> None:
    t0 = time.monotonic()
    assert "cannot resolve roundhouse-no-such-host.invalid" in probe("http://roundhouse-no-such-host.invalid")
    port = closed_port()
    assert probe(f"http://127.0.0.1:{port}") == f"127.0.0.1:{port} refused the connection"
    assert time.monotonic() - t0 < 10.0
