"""Where an insightface-format model pack comes from, and which of its ONNX files detects and which
recognises (loading plumbing only; pre- and post-processing live in _scrfd.py and _arcface.py).

A catalog ``source`` is either a directory holding the pack's ``.onnx`` files, or a pack name
(``buffalo_l``): the pack is then read from ``<cache_dir>/insightface/<name>/`` and, the first time,
downloaded there from insightface's releases (or the ``url`` option) with its progress in the log, checked
against the ``sha256`` option when one is given, and unpacked beside its target before it is moved in,
so an interrupted download never leaves a half pack behind. A pull (``modelhost.pull_urls``) fetches the
same URL into the same folder ahead of the load, outside the worker.

Options ``det_model`` and ``rec_model`` name the files to use (a file name in the pack, or an absolute
path: any ArcFace-format recogniser, e.g. LVFace-B exported to ONNX, can be paired with a pack's
detector). Otherwise each file is classified by its graph, as insightface's model router does: five or
more outputs is an SCRFD detector; one output and a square input of at least 112 pixels that is a
multiple of 16 (but not the 192 of landmark models) is an ArcFace recogniser.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelhost import pull_urls
from modelhost.catalog import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_URL = pull_urls.INSIGHTFACE_URL  # one URL for a load and a pull (``POST /v1/models/{name}/pull``)
PACK_NAME = pull_urls.PACK_NAME
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Pack:
    detector: Path
    recognizer: Path


def resolve(spec: ModelSpec, cache_dir: str) -> Pack:
    directory = pack_dir(spec, cache_dir)
    det = _named(directory, spec.options.get("det_model"))
    rec = _named(directory, spec.options.get("rec_model"))
    if det is None or rec is None:
        found = classify(directory)
        det = det or _one(found["detection"], "detection", directory, "det_model")
        rec = rec or _one(found["recognition"], "recognition", directory, "rec_model")
    return Pack(detector=det, recognizer=rec)


def pack_dir(spec: ModelSpec, cache_dir: str) -> Path:
    source = spec.source
    if os.path.isdir(source):
        return Path(source)
    if not PACK_NAME.match(source):
        raise FileNotFoundError(f"model {spec.id}: source {source!r} is neither a directory nor a pack name like buffalo_l")
    target = Path(cache_dir).expanduser() / "insightface" / source
    if target.is_dir() and any(target.glob("*.onnx")):
        return target
    url = str(spec.options.get("url") or DEFAULT_URL.format(name=source))
    download_pack(url, target, sha256=spec.options.get("sha256"))
    return target


def download_pack(url: str, target: Path, *, sha256: str | None = None) -> None:
    """Download the zip at ``url`` and unpack its ``.onnx`` files into ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.zip.partial"
    staging = target.parent / f".{target.name}.partial"
    log.info("downloading %s into %s", url, target)
    digest = hashlib.sha256()
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=60) as resp, open(partial, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0)
        done, next_report, last_log = 0, 0.1, t0
        while chunk := resp.read(CHUNK_BYTES):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            now = time.monotonic()
            if (total and done / total >= next_report) or now - last_log >= 5.0:
                log.info("downloading %s: %s", target.name, _progress(done, total, now - t0))
                last_log = now
                while total and done / total >= next_report:
                    next_report += 0.1
    if total and done != total:
        partial.unlink(missing_ok=True)
        raise OSError(f"download of {url} ended after {done} of {total} bytes")
    if sha256 and digest.hexdigest() != str(sha256).lower():
        partial.unlink(missing_ok=True)
        raise ValueError(f"download of {url} has sha256 {digest.hexdigest()}, the catalog expects {sha256}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with zipfile.ZipFile(partial) as zf:
            members = [m for m in zf.infolist() if m.filename.endswith(".onnx") and not m.is_dir()]
            if not members:
                raise ValueError(f"{url} holds no .onnx file")
            for m in members:  # flattened: a pack zipped with or without its folder unpacks the same
                with zf.open(m) as src, open(staging / Path(m.filename).name, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_BYTES)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        partial.unlink(missing_ok=True)
    log.info("downloaded %s: %d model file(s), %.1f MB in %.1f s", target.name, len(members), done / 1e6,
             time.monotonic() - t0)


def _progress(done: int, total: int, seconds: float) -> str:
    rate = done / 1e6 / max(seconds, 1e-6)
    if total:
        return f"{done / 1e6:.1f} of {total / 1e6:.1f} MB ({100 * done / total:.0f}%), {rate:.1f} MB/s"
    return f"{done / 1e6:.1f} MB, {rate:.1f} MB/s"


def classify(directory: Path) -> dict[str, list[Path]]:
    """Each ``.onnx`` file of ``directory`` by task, following insightface's model router."""
    found: dict[str, list[Path]] = {"detection": [], "recognition": [], "other": []}
    for path in sorted(directory.glob("*.onnx")):
        found[task_of(graph_of(path))].append(path)
    return found


def graph_of(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph


def input_hw(graph: Any) -> tuple[int | None, int | None]:
    """Height and width of the graph's first input; None where the dimension is dynamic."""
    dims = graph.input[0].type.tensor_type.shape.dim
    if len(dims) < 4:
        return None, None
    return tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in dims[2:4])  # type: ignore[return-value]


def task_of(graph: Any) -> str:
    if len(graph.output) >= 5:
        return "detection"
    h, w = input_hw(graph)
    if len(graph.output) == 1 and h is not None and h == w and h >= 112 and h % 16 == 0 and h != 192:
        return "recognition"
    return "other"


def _named(directory: Path, name: Any) -> Path | None:
    if not name:
        return None
    path = Path(str(name))
    path = path if path.is_absolute() else directory / path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def _one(paths: list[Path], task: str, directory: Path, option: str) -> Path:
    if len(paths) == 1:
        return paths[0]
    if not paths:
        raise FileNotFoundError(f"{directory} holds no {task} model (.onnx)")
    names = ", ".join(p.name for p in paths)
    raise ValueError(f"{directory} holds several {task} models ({names}); name one with the {option!r} option")
