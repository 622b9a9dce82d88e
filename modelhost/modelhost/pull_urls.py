"""Weights a pull fetches by URL (kind ``url``): which files, from where, into which path of the cache, and the
fetch itself. The paths are the ones each backend's load reads, so a load after a pull downloads nothing:

* insightface packs (face): ``<cache>/insightface/<name>/``, the ``.onnx`` files of the zip at the ``url``
  option or ``INSIGHTFACE_URL``, checked against the ``sha256`` option when one is given (face-svc's
  ``_packs.pack_dir`` reads that folder, and downloads with the same URL when a load finds it empty);
* openai-whisper names (asr): ``<cache>/whisper/<file>``, the URL of whisper's own ``_MODELS`` table (read from
  the installed package without importing it: that would import torch into the HTTP process), checked against
  the sha256 that URL carries, as ``whisper.load_model(download_root=...)`` checks it;
* Piper voice ids (tts): ``<cache>/piper/<voice>.onnx`` and its ``.onnx.json``, from the voice repository on the
  hub (``HF_ENDPOINT``, so a stand-in hub serves them too); the backend's own fallback download uses the same
  URLs and this same fetch. No digest is published in those URLs: the length is checked.

A file is written to a hidden ``.<name>.partial`` beside its target, hashed as it arrives, and renamed when
complete and checked; a zip is unpacked into a hidden folder that is then renamed. The files of one model are
renamed in the listed order once all have arrived (a Piper voice's ``.onnx`` last: the file its load looks for).
A failure removes what it had written. Blocking throughout: run it in a thread.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .catalog import ModelSpec

INSIGHTFACE_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/{name}.zip"
PACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PIPER_REPO = "rhasspy/piper-voices"
PIPER_VOICE = re.compile(r"^(?P<family>[^-_]+)_(?P<region>[^-]+)-(?P<name>[^-]+)-(?P<quality>.+)$")
HUB_ENDPOINT = "https://huggingface.co"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30.0


def hub_endpoint() -> str:
    """``HF_ENDPOINT``, the hub's own variable (a stand-in hub, a mirror), else the hub."""
    return (os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` set, as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


class FetchError(Exception):
    """A fetch failed; the message is the reason a user reads."""


@dataclass(frozen=True)
class UrlFile:
    url: str
    dest: Path  # the file, or for a zip the folder its members are unpacked into
    sha256: str | None = None
    unzip: str | None = None  # a zip: the suffix of the members kept (flattened into dest)

    @property
    def partial(self) -> Path:
        return self.dest.parent / (f".{self.dest.name}.zip.partial" if self.unzip else f".{self.dest.name}.partial")


def piper_voice_files(voice: str, endpoint: str, folder: Path) -> list[UrlFile] | None:
    """A Piper voice id's two files in the voice repository (piper.download_voices' layout), or None for a
    name that is not a voice id."""
    m = PIPER_VOICE.match(voice)
    if m is None:
        return None
    region = f"{m['family']}_{m['region']}"
    base = f"{endpoint.rstrip('/')}/{PIPER_REPO}/resolve/main/{m['family']}/{region}/{m['name']}/{m['quality']}"
    return [UrlFile(f"{base}/{voice}{ext}", folder / f"{voice}{ext}") for ext in (".onnx.json", ".onnx")]


def whisper_models() -> dict[str, str]:
    """openai-whisper's ``_MODELS`` (name -> URL whose last folder is the file's sha256): the imported module's
    where it is imported, else read from its source without importing it; empty where it is not installed."""
    mod = sys.modules.get("whisper")
    if mod is not None and isinstance(getattr(mod, "_MODELS", None), dict):
        return dict(mod._MODELS)
    try:
        found = importlib.util.find_spec("whisper")
    except (ImportError, ValueError):
        return {}
    if found is None or not found.origin:
        return {}
    for node in ast.parse(Path(found.origin).read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_MODELS" for t in node.targets):
            return dict(ast.literal_eval(node.value))
    return {}


def url_files(spec: ModelSpec, cache_dir: Path, endpoint: str) -> list[UrlFile] | None:
    """The files a pull of ``spec`` fetches by URL, or None where its backend has none to fetch that way."""
    source = spec.source
    if spec.backend == "insightface" and PACK_NAME.match(source):
        url = str(spec.options.get("url") or INSIGHTFACE_URL.format(name=source))
        sha = spec.options.get("sha256")
        return [UrlFile(url, cache_dir / "insightface" / source, str(sha).lower() if sha else None, unzip=".onnx")]
    if spec.backend == "whisper":
        url = whisper_models().get(source)
        if url is None:
            return None
        return [UrlFile(url, cache_dir / "whisper" / os.path.basename(url), url.split("/")[-2].lower())]
    if spec.backend == "piper" and not source.endswith(".onnx"):
        return piper_voice_files(source, endpoint, cache_dir / "piper")
    return None


def complete(f: UrlFile) -> bool:
    if f.unzip:
        return f.dest.is_dir() and any(f.dest.glob(f"*{f.unzip}"))
    return f.dest.is_file()


def on_disk(files: list[UrlFile]) -> tuple[bool, int | None]:
    """(every file in place, their bytes on disk: None when none is)."""
    present = [f for f in files if complete(f)]
    size = sum(_bytes(f.dest) for f in present)
    return len(present) == len(files), size if present else None


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(files: list[UrlFile], *, on_total: Callable[[int], None], on_bytes: Callable[[int], None]) -> None:
    """Download the files of ``files`` not yet in place. ``on_total`` gets the bytes to fetch as each response
    tells its length (the sum so far), ``on_bytes`` each piece's length as it is written."""
    todo = []
    for f in files:
        if complete(f) and (f.sha256 is None or f.unzip or _sha256_of(f.dest) == f.sha256):
            continue
        todo.append(f)
    total = 0
    on_total(0)
    try:
        for f in todo:
            total = _download(f, total, on_total, on_bytes)
        for f in todo:
            _install(f)
    finally:
        for f in todo:
            _clean(f)


def _download(f: UrlFile, total: int, on_total: Callable[[int], None], on_bytes: Callable[[int], None]) -> int:
    f.dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    done = 0
    try:
        with urllib.request.urlopen(f.url, timeout=TIMEOUT_S) as resp, open(f.partial, "wb") as out:
            length = int(resp.headers.get("Content-Length") or 0)
            total += length
            on_total(total)
            while chunk := resp.read1(CHUNK_BYTES):  # what has arrived, up to a chunk: progress as it comes
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                on_bytes(len(chunk))
    except urllib.error.HTTPError as e:
        raise FetchError(f"cannot fetch {f.url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e.strerror or type(e).__name__
        raise FetchError(f"cannot fetch {f.url}: {reason}") from None
    if length and done != length:
        raise FetchError(f"download of {f.url} ended after {done} of {length} bytes")
    if f.sha256 and digest.hexdigest() != f.sha256:
        raise FetchError(f"download of {f.url} has sha256 {digest.hexdigest()}, expected {f.sha256}; "
                         "nothing was kept")
    return total


def _staging(f: UrlFile) -> Path:
    return f.dest.parent / f".{f.dest.name}.partial"


def _install(f: UrlFile) -> None:
    """A checked download into its place: renamed, or its zip's members unpacked into a folder renamed in."""
    if not f.unzip:
        os.replace(f.partial, f.dest)
        return
    staging = _staging(f)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with zipfile.ZipFile(f.partial) as zf:
            members = [m for m in zf.infolist() if m.filename.endswith(f.unzip) and not m.is_dir()]
            if not members:
                raise FetchError(f"{f.url} holds no {f.unzip} file")
            for m in members:  # flattened: a pack zipped with or without its folder unpacks the same
                with zf.open(m) as src, open(staging / Path(m.filename).name, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_BYTES)
    except zipfile.BadZipFile as e:
        raise FetchError(f"{f.url} is not a zip file: {e}") from None
    shutil.rmtree(f.dest, ignore_errors=True)
    staging.rename(f.dest)


def remove(files: list[UrlFile]) -> int:
    """Remove the files (and any partial of them) a pull fetches: nothing else. The bytes freed."""
    freed = 0
    for f in files:
        if f.dest.exists():
            freed += _bytes(f.dest)
            if f.dest.is_dir():
                shutil.rmtree(f.dest)
            else:
                f.dest.unlink()
        _clean(f)
    return freed


def _clean(f: UrlFile) -> None:
    """What a fetch of ``f`` writes before its rename: the partial download, a zip's unpacking folder."""
    f.partial.unlink(missing_ok=True)
    if f.unzip:
        shutil.rmtree(_staging(f), ignore_errors=True)
