"""The jobs' file work against a hostile library: globs and walks that do not follow symlinked folders in
circles, listings bounded in entries, only regular files opened (a FIFO never blocks an open), and the
lane that abandons a stuck call and keeps stuck calls to its thread count."""

from __future__ import annotations

import asyncio
import glob as stdglob
import os
import threading
from pathlib import Path

import pytest

from gateway.jobs.files import Budget, Lane, LaneFull, NotRegularFile, Stalled, glob, open_regular, walk
from gateway.jobs.inputs import Library
from gateway.jobs.reading import ItemLimits, ItemReader
from gateway.jobs.store import Item
from gateway.jobs.tasks import ItemFailed
from modelhost.errors import BadRequest, PayloadTooLarge

pytestmark = pytest.mark.unit

IMAGES = frozenset({"image", "video"})


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "lib"
    for rel in ("a/1.jpg", "a/b/2.jpg", "a/b/c/3.png", "x.jpg", "a/.h/4.jpg", "a/.5.jpg", "d/6.txt", "d/e/7.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    return root


@pytest.mark.parametrize("pattern", ["**/*.jpg", "a/**/*.jpg", "*/*.jpg", "a/*/*.jpg", "**/b/*", "a/**", "**/*.[jp][pn]g",
                                     "?.jpg", "a/b/**/*.png", "d/**/7.jpg", "nope/**/*.jpg", "a/.*.jpg"])
def test_glob_finds_what_the_standard_glob_finds_in_a_tree_without_symlinks(tree: Path, pattern: str) -> None:
    ours = glob(str(tree / pattern), Budget())
    theirs = sorted(p for p in stdglob.glob(str(tree / pattern), recursive=True) if not os.path.isdir(p))
    assert ours == theirs


def test_a_symlink_loop_is_not_followed_by_double_star_or_a_walk(tree: Path) -> None:
    (tree / "a" / "up").symlink_to("..", target_is_directory=True)  # lib/a/up -> lib: a circle
    (tree / "d" / "self").symlink_to(".", target_is_directory=True)
    found = glob(str(tree / "**" / "*.jpg"), Budget(max_entries=1000))
    assert [Path(p).relative_to(tree).as_posix() for p in found] == ["a/1.jpg", "a/b/2.jpg", "d/e/7.jpg", "x.jpg"]
    assert [Path(p).relative_to(tree).as_posix() for p in walk(str(tree), Budget(max_entries=1000))] == [
        "a/1.jpg", "a/b/2.jpg", "a/b/c/3.png", "d/6.txt", "d/e/7.jpg", "x.jpg"]


def test_a_one_level_wildcard_enters_a_symlinked_folder_as_deep_as_the_pattern_goes(tree: Path) -> None:
    (tree / "a" / "up").symlink_to("..", target_is_directory=True)
    found = glob(str(tree / "a" / "*" / "*.jpg"), Budget(max_entries=1000))
    assert [Path(p).relative_to(tree).as_posix() for p in found] == ["a/b/2.jpg", "a/up/x.jpg"]


def test_a_listing_past_its_entry_budget_is_413(tree: Path) -> None:
    with pytest.raises(PayloadTooLarge) as e:
        glob(str(tree / "**" / "*.jpg"), Budget(max_entries=5))
    assert e.value.code == "too_many_entries"


def test_a_listing_past_its_time_is_400(tree: Path) -> None:
    with pytest.raises(BadRequest) as e:
        walk(str(tree), Budget(timeout_s=-1))
    assert e.value.code == "listing_timeout"


def test_a_library_expansion_over_a_symlink_loop_ends_and_finds_each_file_once(tree: Path) -> None:
    (tree / "a" / "up").symlink_to("..", target_is_directory=True)
    found = Library([tree]).expand(["**/*.jpg", "a/**/*.jpg"], IMAGES, max_items=100)
    assert sorted(Path(real).relative_to(tree).as_posix() for _, real, _ in found) == [
        "a/1.jpg", "a/b/2.jpg", "d/e/7.jpg", "x.jpg"]


def test_a_fifo_is_never_opened_and_reading_it_is_the_items_own_error(tree: Path) -> None:
    os.mkfifo(tree / "a" / "pipe.jpg")  # no writer: a plain open() would wait for ever
    found = Library([tree]).expand(["a"], IMAGES, max_items=100)
    assert "pipe.jpg" in [Path(s).name for s, _, _ in found]  # listed: the job shows it as a failed item
    with pytest.raises(NotRegularFile):
        open_regular(str(tree / "a" / "pipe.jpg"))
    reader = ItemReader(Library([tree]), ItemLimits(max_image_bytes=1000, max_image_pixels=1000, max_file_bytes=1000))
    item = Item("j", 1, "a/pipe.jpg", str(tree / "a" / "pipe.jpg"), False, "image", 0)
    with pytest.raises(ItemFailed) as e:
        reader.read_image(item)
    assert e.value.code == "not_a_regular_file"
    with pytest.raises(ItemFailed) as e:
        reader.hash_file(item)
    assert e.value.code == "not_a_regular_file"


def test_open_regular_reads_a_regular_file_in_blocking_mode(tree: Path) -> None:
    with open_regular(str(tree / "x.jpg")) as f:
        assert os.get_blocking(f.fileno()) and f.read() == b"x"


async def test_the_lane_abandons_a_call_without_progress_and_keeps_its_thread_slot() -> None:
    lane = Lane("test", threads=1, stall_s=0.2)
    release = threading.Event()

    def stuck(*, tick) -> str:  # noqa: ANN001 - the lane's watch
        release.wait()
        return "late"

    with pytest.raises(Stalled):
        await lane.run(stuck)
    with pytest.raises(LaneFull):  # the stuck call still holds the lane's one thread
        await lane.run(lambda *, tick: "next")
    release.set()
    for _ in range(100):  # the slot comes back once the stuck call returns
        try:
            assert await lane.run(lambda *, tick: "next") == "next"
            break
        except LaneFull:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("the slot never came back")


async def test_the_lane_waits_for_a_slow_call_that_keeps_making_progress() -> None:
    lane = Lane("test", threads=2, stall_s=2.0)

    def slow(n: int, *, tick) -> int:  # noqa: ANN001
        for _ in range(n):
            threading.Event().wait(0.05)
            tick()
        return n

    assert await lane.run(slow, 60) == 60  # 3 s in all, never 2 s without progress


async def test_the_lane_passes_the_calls_exception_on() -> None:
    def fails(*, tick) -> None:  # noqa: ANN001
        raise PayloadTooLarge("too big")

    with pytest.raises(PayloadTooLarge):
        await Lane("test", threads=1, stall_s=5).run(fails)


class HungLibrary(Library):
    """A library on a mount that stopped answering: listing it blocks until ``release`` is set."""

    def __init__(self, root: Path, release: threading.Event) -> None:
        super().__init__([root])
        self.release = release

    def expand(self, *args, tick, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        self.release.wait()
        return []


async def test_a_hung_listing_is_400_and_a_lane_full_of_them_429_while_the_loop_runs(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from gateway.jobs.service import Jobs
    from gateway.jobs.tasks import TASKS
    from modelhost.errors import Overloaded

    release = threading.Event()
    jobs = SimpleNamespace(library=HungLibrary(tmp_path, release), listing=Lane("listing", threads=1, stall_s=0.3),
                           settings=SimpleNamespace(jobs_max_items=10))
    try:
        with pytest.raises(BadRequest) as e:
            await Jobs.resolve_paths(jobs, TASKS["caption"], ["photos"])  # type: ignore[arg-type]
        assert e.value.code == "listing_timeout"
        with pytest.raises(Overloaded) as e:
            await Jobs.resolve_paths(jobs, TASKS["caption"], ["photos"])  # type: ignore[arg-type]
        assert e.value.code == "library_busy" and e.value.status == 429
    finally:
        release.set()
