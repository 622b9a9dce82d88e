"""What a job reads: library paths (checked against the operator's roots) and uploaded files (stored as
content-addressed blobs before the job is created).

The library rule: a path, a glob, or every file a folder walk finds is resolved (symlinks and '..'
followed to the real file) and must lie inside one of ``GATEWAY_LIBRARY_ROOTS``; otherwise the whole
request is refused with 403 before anything is opened. The check is repeated when an item is read,
so a symlink swapped after the job was created cannot lead outside either.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from modelhost.errors import BadRequest, Forbidden, PayloadTooLarge

from .files import GLOB_CHARS, Budget, glob, glob_base, open_regular, walk
from .kinds import kind_of


def sniff_kind(head: bytes) -> str:
    """The kind of a file from its first bytes (for uploads named without a known extension)."""
    if head[:3] == b"\xff\xd8\xff" or head[:8] == b"\x89PNG\r\n\x1a\n" or head[:6] in (b"GIF87a", b"GIF89a") \
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP") or head[:2] == b"BM" or head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image"
    if head[4:8] == b"ftyp" or head[:4] == b"\x1aE\xdf\xa3":
        return "video"  # MP4/MOV (an .m4a is named; unnamed ones are read as video, whose audio a transcribe job takes)
    if (head[:4] == b"RIFF" and head[8:12] == b"WAVE") or head[:4] in (b"fLaC", b"OggS") or head[:3] == b"ID3" \
            or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio"
    return "other"


class Library:
    """The operator's roots, resolved once."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [Path(os.path.realpath(r)) for r in roots]

    def inside(self, real: str | Path) -> bool:
        p = Path(real)
        return any(p == r or p.is_relative_to(r) for r in self.roots)

    def check(self, path: str | Path, *, shown: str | None = None) -> str:
        """The real path of ``path`` if it lies inside a root, else 403. Nothing is opened."""
        real = os.path.realpath(path)
        if not self.inside(real):
            raise Forbidden(f"{shown or path} is outside the library roots", param="paths", code="outside_library")
        return real

    def expand(self, specs: list[str], kinds: frozenset[str], *, max_items: int,
               tick: Callable[[], None] = lambda: None, links_skipped: set[str] | None = None) -> list[tuple[str, str, str]]:
        """(source, real path, kind) for every file the paths, folders and globs name, in a stable order.
        A relative path is taken inside the first root. Blocking, bounded (``files.Budget``: 413
        ``too_many_entries``, 400 ``listing_timeout``); run it on a ``files.Lane`` (``tick`` is its watch).
        Files named one by one are taken whatever their kind (the job records an error for a kind its task
        cannot read); folders and globs contribute only files of ``kinds``. A FIFO, socket or device is
        taken like a file: reading it fails that item alone (``not_a_regular_file``). The symlinked folders that
        folders and ``**`` passed over, not entered, are added to ``links_skipped``."""
        if not self.roots:
            raise Forbidden("this gateway has no library roots (GATEWAY_LIBRARY_ROOTS); upload the files instead",
                            param="paths", code="no_library_roots")
        budget = Budget(tick=tick)
        out: list[tuple[str, str, str]] = []
        seen: set[str] = set()

        def add(source: str, real: str) -> None:
            if real in seen:
                return
            seen.add(real)
            out.append((source, real, kind_of(real)))
            if len(out) > max_items:
                raise PayloadTooLarge(f"the paths name more than {max_items} files", param="paths", code="too_many_items")

        for spec in specs:
            if not isinstance(spec, str) or not spec or "\x00" in spec:
                raise BadRequest("each path must be a non-empty string", param="paths")
            path = spec if os.path.isabs(spec) else os.path.join(self.roots[0], spec)
            if any(c in path for c in GLOB_CHARS):
                self.check(glob_base(path), shown=spec)
                for m in glob(path, budget):
                    budget.alive()
                    real = self.check(m, shown=m)
                    if not os.path.isdir(real) and kind_of(real) in kinds:
                        add(m, real)
                continue
            real = self.check(path, shown=spec)
            if os.path.isdir(real):
                for f in walk(real, budget):
                    budget.alive()
                    if kind_of(f) in kinds:
                        add(f, self.check(f, shown=f))
            elif os.path.exists(real):
                add(path, real)
            else:
                raise BadRequest(f"{spec} does not exist", param="paths", code="path_not_found")
        if links_skipped is not None:
            links_skipped.update(budget.links_skipped)
        return out

    def open_checked(self, path: str) -> BinaryIO:
        """Open a library file for reading after checking, again, where it really is; a regular file only
        (``files.NotRegularFile`` otherwise: a FIFO's open would wait for a writer for ever)."""
        real = os.path.realpath(path)
        if not self.inside(real):
            raise PermissionError(f"{path} now resolves outside the library roots")
        return open_regular(real)


class BlobStore:
    """Uploaded files, content-addressed under ``data_dir/jobs/blobs/<sha256>``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, src: BinaryIO, *, max_bytes: int) -> tuple[str, str, int]:
        """Copy ``src`` in while hashing it; returns (sha256, path, size). Written to a temporary name,
        flushed to disk, then renamed: a crash never leaves a half blob under a real name."""
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(1 << 20):
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"an uploaded file is larger than {max_bytes} bytes", param="file")
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            final = self.folder / digest
            os.replace(tmp, final)
            return digest, str(final), size
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove_unused(self, keep: set[str], candidates: set[str] | None = None) -> int:
        """Delete blobs no pending item needs (all of them, or only ``candidates``)."""
        n = 0
        paths = candidates if candidates is not None else {str(p) for p in self.folder.iterdir()}
        for p in paths:
            if p not in keep and Path(p).parent == self.folder:
                with contextlib.suppress(OSError):
                    os.unlink(p)
                    n += 1
        return n


def sha256_file(f: BinaryIO, tick: Callable[[], None] = lambda: None) -> str:
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
        tick()
    return h.hexdigest()
