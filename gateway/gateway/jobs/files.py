"""The blocking file work of jobs, made safe against a hostile or broken library: listing folders and globs,
and opening the files found.

Invariants, and the bugs they guard against:

1. Listing never follows a symlinked folder where the pattern does not bound the depth: a folder walk and a
   glob's ``**`` step over symlinked folders (``ln -s .. loop/up`` made ``glob.glob(recursive=True)`` walk in
   circles for ever, on the event loop). A one-level wildcard (``*``) may enter one: the pattern's length
   bounds how deep that goes.
2. Every listing is bounded in entries looked at and in time (``Budget``): a huge tree is refused with a 4xx
   instead of being walked for minutes.
3. Only regular files are read (``open_regular``): the type is checked before opening (a FIFO's ``open``
   waits for a writer for ever; a device may do anything when opened), the file is opened with
   ``O_NONBLOCK`` (a FIFO swapped in between cannot block the open) and its type checked again on the open
   descriptor.
4. Blocking file calls run on a ``Lane``: daemon threads, a bounded number at once, each watched for
   progress. A call that makes no progress for ``stall_s`` (a hung network mount) is abandoned with
   ``Stalled``: its caller gets an answer, its thread keeps its slot until the call returns (so stuck calls
   can never take more than the lane's threads), and a daemon thread never holds up the process's exit.
   (``asyncio.to_thread`` had none of this: each stuck read took one of the default executor's threads for
   good, and the executor's threads are joined at exit, so SIGTERM could not end the gateway.)
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, TypeVar

from modelhost.errors import BadRequest, PayloadTooLarge

T = TypeVar("T")
GLOB_CHARS = frozenset("*?[")
LISTING_MAX_ENTRIES = 1_000_000
"""Most folder entries one request's paths may have the gateway look at (413 ``too_many_entries``)."""
LISTING_TIMEOUT_S = 30.0
"""Longest one request's paths may take to list (400 ``listing_timeout``)."""
LISTING_STALL_S = 10.0
"""How long a listing may go without looking at an entry before it is abandoned (a hung mount; 400)."""
STALL_S = 15.0
"""How long a blocking file call may go without progress (no entry listed, no MiB read) before it is abandoned."""


class Stalled(Exception):
    """A blocking call made no progress for its lane's ``stall_s``."""


class LaneFull(Stalled):
    """No thread of the lane came free in ``stall_s``: every one is stuck in a call."""


class NotRegularFile(OSError):
    """The path is a FIFO, a socket, a device or a folder: nothing a job reads."""


def _nothing() -> None:
    pass


class Budget:
    """What a listing may still spend: entries and time. ``spend`` is called once per entry looked at."""

    def __init__(self, *, max_entries: int = LISTING_MAX_ENTRIES, timeout_s: float = LISTING_TIMEOUT_S,
                 tick: Callable[[], None] = _nothing) -> None:
        self.left = max_entries
        self.max_entries = max_entries
        self.timeout_s = timeout_s
        self.until = time.monotonic() + timeout_s
        self.tick = tick
        self.links_skipped: set[str] = set()  # symlinked folders a walk or a ** passed over (the job's answer says so)

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise PayloadTooLarge(f"the paths lead through more than {self.max_entries} folder entries; name smaller "
                                  "folders or narrower globs", param="paths", code="too_many_entries")
        self.alive()

    def alive(self) -> None:
        """Progress that costs no entry (a match checked): 400 past the time, else a tick."""
        if time.monotonic() > self.until:
            raise BadRequest(f"listing the paths took longer than {self.timeout_s:g} s (a very large tree, or a slow "
                             "mount); name smaller folders or narrower globs", param="paths", code="listing_timeout")
        self.tick()


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _entries(folder: str, budget: Budget) -> list[os.DirEntry[str]]:
    """The entries of ``folder``, each paid for; an unreadable folder has none (as ``glob`` has it)."""
    out = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                budget.spend()
                out.append(entry)
    except OSError:
        return []
    return out


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    """A folder that is not a symlink (what a walk may enter)."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def walk(folder: str, budget: Budget) -> list[str]:
    """Every non-folder entry under ``folder`` in path order; hidden files and folders are skipped, symlinked
    folders are not entered (they could lead anywhere, or in circles), symlinked files are listed (the
    caller checks where they lead). Non-regular files are listed too: reading refuses each with its own error."""
    out: list[str] = []
    stack = [folder]
    while stack:
        for entry in _entries(stack.pop(), budget):
            if _hidden(entry.name):
                continue
            if _is_real_dir(entry):
                stack.append(entry.path)
            elif not _is_dir(entry):
                out.append(entry.path)
            else:
                budget.links_skipped.add(entry.path)
    return sorted(out)


def glob_base(pattern: str) -> str:
    """The folder a glob starts from: its leading components without glob characters."""
    base: list[str] = []
    for part in Path(pattern).parts:
        if any(c in part for c in GLOB_CHARS):
            break
        base.append(part)
    return os.path.join(*base) if base else "/"


def glob(pattern: str, budget: Budget) -> list[str]:
    """The non-folder entries ``pattern`` names, sorted, as ``glob.glob(pattern, recursive=True)`` finds them
    but with ``**`` never entering symlinked or hidden folders, ``*`` matching a hidden name only where the
    pattern's component starts with a dot, and every entry looked at paid for from ``budget``."""
    parts = Path(pattern).parts
    start = next((i for i, p in enumerate(parts) if any(c in p for c in GLOB_CHARS)), len(parts))
    base = os.path.join(*parts[:start]) if start else os.curdir
    rest = parts[start:]
    if not rest:
        return [base] if os.path.lexists(base) and not os.path.isdir(base) else []
    found: set[str] = set()
    done: set[tuple[str, int]] = set()
    stack = [(base, 0)]
    while stack:
        folder, i = stack.pop()
        if (folder, i) in done:
            continue
        done.add((folder, i))
        part, last = rest[i], i == len(rest) - 1
        if part == "**":
            if last:
                found.update(walk(folder, budget))
                continue
            stack.append((folder, i + 1))  # ** as no folder at all
            for e in _entries(folder, budget):
                if _hidden(e.name):
                    continue
                if _is_real_dir(e):
                    stack.append((e.path, i))
                elif _is_dir(e):
                    budget.links_skipped.add(e.path)
        elif not any(c in part for c in GLOB_CHARS):
            path = os.path.join(folder, part)
            if last and os.path.lexists(path) and not os.path.isdir(path):
                found.add(path)
            elif not last and os.path.isdir(path):
                stack.append((path, i + 1))
        else:
            for entry in _entries(folder, budget):
                if (_hidden(entry.name) and not part.startswith(".")) or not fnmatch.fnmatchcase(entry.name, part):
                    continue
                if not last and _is_dir(entry):  # may be a symlinked folder: the pattern bounds the depth
                    stack.append((entry.path, i + 1))
                elif last and not _is_dir(entry):
                    found.add(entry.path)
    return sorted(found)


def open_regular(path: str) -> BinaryIO:
    """``path`` opened for reading if it is a regular file, else ``NotRegularFile`` (see invariant 3)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise NotRegularFile(f"{path} is not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _Watch:
    def __init__(self) -> None:
        self.last = time.monotonic()

    def tick(self) -> None:
        self.last = time.monotonic()


class Lane:
    """Blocking file calls on daemon threads, at most ``threads`` at once, each abandoned after ``stall_s``
    without progress (see invariant 4). The function gets ``tick=``, to call whenever it makes progress."""

    def __init__(self, name: str, *, threads: int, stall_s: float) -> None:
        self.name = name
        self.stall_s = stall_s
        self._threads = threads
        self._slots: asyncio.Semaphore | None = None  # made on the loop that first uses it

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._threads)
        slots = self._slots
        try:
            async with asyncio.timeout(self.stall_s):
                await slots.acquire()
        except TimeoutError:
            raise LaneFull(f"every {self.name} thread has been stuck for {self.stall_s:g} s (a file system that does "
                          "not answer)") from None
        watch = _Watch()
        done: asyncio.Future[tuple[bool, Any]] = loop.create_future()  # (returned?, value or exception)

        def settle(ok: bool, value: Any) -> None:
            slots.release()
            if not done.done():
                done.set_result((ok, value))

        def main() -> None:
            try:
                ok, value = True, fn(*args, tick=watch.tick, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                ok, value = False, e
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(settle, ok, value)

        try:
            threading.Thread(target=main, name=f"{self.name}-{id(watch):x}", daemon=True).start()
        except BaseException:  # no thread (the process is at its limit): the slot was never used
            slots.release()
            raise
        while True:
            idle = time.monotonic() - watch.last
            try:
                async with asyncio.timeout(max(0.0, self.stall_s - idle)):
                    ok, value = await asyncio.shield(done)
            except TimeoutError:
                if time.monotonic() - watch.last >= self.stall_s:
                    raise Stalled(f"a file call made no progress for {self.stall_s:g} s (a file system that does "
                                  "not answer)") from None
                continue
            if ok:
                return value
            raise value
