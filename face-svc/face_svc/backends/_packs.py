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

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelhost import pull_urls
from modelhost.catalog import ModelSpec

log = logging.getLogger(__name__)



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
    if not pull_urls.PACK_NAME.match(source):
        raise FileNotFoundError(f"model {spec.id}: source {source!r} is neither a directory nor a pack name like buffalo_l")
    # One URL, sha256 and folder for a load and a pull (``POST /v1/models/{name}/pull``).
    [pack] = pull_urls.url_files(spec, Path(cache_dir).expanduser(), endpoint="")
    if not pull_urls.complete(pack):
        download_pack(pack)
    return pack.dest


def download_pack(pack: pull_urls.UrlFile) -> None:
    """Download the pack's zip and unpack its ``.onnx`` files into its folder: the fetch a pull does, with its
    progress in the log."""
    target = pack.dest
    log.info("downloading %s into %s", pack.url, target)
    t0 = time.monotonic()
    state = {"total": 0, "done": 0, "next": 0.1, "logged": t0}

    def on_bytes(n: int) -> None:
        state["done"] += n
        done, total, now = state["done"], state["total"], time.monotonic()
        if (total and done / total >= state["next"]) or now - state["logged"] >= 5.0:
            log.info("downloading %s: %s", target.name, _progress(done, total, now - t0))
            state["logged"] = now
            while total and done / total >= state["next"]:
                state["next"] += 0.1

    try:
        pull_urls.fetch([pack], on_total=lambda n: state.update(total=n), on_bytes=on_bytes)
    except pull_urls.FetchError as e:
        raise ValueError(str(e)) from None
    log.info("downloaded %s: %d model file(s), %.1f MB in %.1f s", target.name, len(list(target.glob("*.onnx"))),
             state["done"] / 1e6, time.monotonic() - t0)


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
