"""Reading and hashing an item's file. Blocking: every method runs on the jobs' file ``Lane``
(``files.Lane``: bounded threads, abandoned when a read stalls) and takes its ``tick``.

Invariants:

1. A library file is opened only after its real path (symlinks and '..' resolved, again, at read time)
   is checked to lie inside the library roots: a symlink swapped after the job was created cannot lead
   outside. An upload is our own content-addressed blob and is opened as it is.
2. Size limits are checked on the open file (``fstat``), before its bytes are read: an image above the
   interactive routes' ``max_upload_bytes``, any file above ``jobs_max_file_bytes``.
3. Every way a file can fail to be read ends the item with an ``ItemFailed`` naming the file
   (``file_not_found``, ``outside_library``, ``not_a_file``, ``not_a_regular_file``, ``unreadable_file``,
   ``file_too_large``); nothing here raises anything else for a bad file.
4. Only a regular file is opened (``files.open_regular``): a FIFO, socket or device in the library is the
   item's ``not_a_regular_file``, never a read that waits for ever.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import BinaryIO, Callable

from modelhost.errors import Forbidden, RoundhouseError

from ..images import check_image
from .files import NotRegularFile
from .inputs import Library, sha256_file
from .store import Item
from .tasks import ItemFailed


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class ItemLimits:
    """How big an item may be: an image as on the interactive routes, any other file as jobs allow."""

    max_image_bytes: int
    max_image_pixels: int
    max_file_bytes: int


class ItemReader:
    def __init__(self, library: Library, limits: ItemLimits) -> None:
        self.library = library
        self.limits = limits

    def read_image(self, item: Item, tick: Callable[[], None] = _nothing) -> tuple[bytes, str, ItemFailed | None]:
        """Read, hash and check an image in one trip to a thread: (bytes, sha256, why it cannot be sent).
        A failed check is returned, not raised: the item's record still gets the content's hash."""
        data = self._read(item, self.limits.max_image_bytes, tick)
        sha = hashlib.sha256(data).hexdigest()
        try:
            check_image(data, max_bytes=self.limits.max_image_bytes, max_pixels=self.limits.max_image_pixels)
        except RoundhouseError as e:
            return data, sha, ItemFailed(e.code, e.message)
        return data, sha, None

    def hash_file(self, item: Item, tick: Callable[[], None] = _nothing) -> str:
        """The sha256 of a (video or audio) file, read in pieces."""
        with self._open(item) as f:
            size = os.fstat(f.fileno()).st_size
            if size > self.limits.max_file_bytes:
                raise ItemFailed("file_too_large", f"{item.source} has {size} bytes; the limit is {self.limits.max_file_bytes}")
            return sha256_file(f, tick)

    def path_of(self, item: Item) -> str:
        """The path a task may open itself (a video's decoder): the blob, or the library file checked again."""
        if item.upload:
            return item.path
        try:
            return self.library.check(item.path)
        except Forbidden as e:
            raise ItemFailed("outside_library", e.message)

    def _read(self, item: Item, max_bytes: int, tick: Callable[[], None]) -> bytes:
        with self._open(item) as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise ItemFailed("file_too_large", f"{item.source} has {size} bytes; the limit for an image is {max_bytes}")
            chunks = []
            while chunk := f.read(min(1 << 20, max_bytes + 1)):
                chunks.append(chunk)
                tick()
                max_bytes -= len(chunk)
                if max_bytes < 0:  # it grew since fstat
                    raise ItemFailed("file_too_large", f"{item.source} has more bytes than the limit for an image")
            return b"".join(chunks)

    def _open(self, item: Item) -> BinaryIO:
        try:
            return open(item.path, "rb") if item.upload else self.library.open_checked(item.path)
        except PermissionError as e:
            raise ItemFailed("outside_library", str(e))
        except FileNotFoundError:
            raise ItemFailed("file_not_found", f"{item.source} no longer exists")
        except IsADirectoryError:
            raise ItemFailed("not_a_file", f"{item.source} is not a file")
        except NotRegularFile:
            raise ItemFailed("not_a_regular_file", f"{item.source} is not a regular file (a folder, FIFO, socket or "
                             "device); only regular files are read")
        except OSError as e:
            raise ItemFailed("unreadable_file", f"{item.source} could not be read: {e.strerror}")
