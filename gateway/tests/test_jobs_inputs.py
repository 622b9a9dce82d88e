"""Library paths for jobs: everything is resolved and must lie inside a root (403 otherwise, nothing
read); folders and globs pick the task's kinds; uploads become content-addressed blobs."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from gateway.jobs.inputs import BlobStore, Library, kind_of, sniff_kind
from modelhost.errors import BadRequest, Forbidden, PayloadTooLarge

pytestmark = pytest.mark.unit

IMAGES = frozenset({"image", "video"})


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "lib"
    (root / "a" / "b").mkdir(parents=True)
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"x")
    (root / "a" / "1.jpg").write_bytes(b"1")
    (root / "a" / "b" / "2.png").write_bytes(b"2")
    (root / "a" / "notes.txt").write_bytes(b"t")
    (root / "a" / ".hidden.jpg").write_bytes(b"h")
    (root / "clip.mp4").write_bytes(b"v")
    (tmp_path / "lib-evil").mkdir()
    (tmp_path / "lib-evil" / "x.jpg").write_bytes(b"e")
    return root, outside


def test_a_folder_gives_its_files_of_the_tasks_kinds_sorted(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    found = Library([root]).expand([str(root)], IMAGES, max_items=100)
    assert [(Path(s).relative_to(root).as_posix(), k) for s, _, k in found] == [
        ("a/1.jpg", "image"), ("a/b/2.png", "image"), ("clip.mp4", "video")]


def test_relative_paths_and_globs_are_taken_inside_the_first_root(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    lib = Library([root])
    assert [Path(r).name for _, r, _ in lib.expand(["a/1.jpg"], IMAGES, max_items=10)] == ["1.jpg"]
    assert [Path(r).name for _, r, _ in lib.expand([str(root / "**" / "*.png")], IMAGES, max_items=10)] == ["2.png"]


@pytest.mark.parametrize("spec", [
    "{outside}/secret.jpg", "a/../../private/secret.jpg", "{root}/../private", "{root}-evil/x.jpg", "/etc/passwd",
    "{outside}/*.jpg", "../**/*.jpg", "{root}/link-out/secret.jpg", "{root}/a/link-file.jpg",
])
def test_paths_outside_the_roots_are_refused_with_403(tree: tuple[Path, Path], spec: str) -> None:
    root, outside = tree
    (root / "link-out").symlink_to(outside, target_is_directory=True)
    (root / "a" / "link-file.jpg").symlink_to(outside / "secret.jpg")
    with pytest.raises(Forbidden) as e:
        Library([root]).expand([spec.format(root=root, outside=outside)], IMAGES, max_items=10)
    assert e.value.code == "outside_library" and e.value.status == 403


def test_a_folder_walk_that_meets_a_symlink_out_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "a" / "escape.jpg").symlink_to(outside / "secret.jpg")
    with pytest.raises(Forbidden):
        Library([root]).expand([str(root)], IMAGES, max_items=100)


def test_symlinks_that_stay_inside_are_followed(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "alias.jpg").symlink_to(root / "a" / "1.jpg")
    found = Library([root]).expand([str(root / "alias.jpg")], IMAGES, max_items=10)
    assert found[0][1] == os.path.realpath(root / "a" / "1.jpg")


def test_no_roots_means_no_paths(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(Forbidden) as e:
        Library([]).expand([str(root)], IMAGES, max_items=10)
    assert e.value.code == "no_library_roots"


def test_a_missing_path_inside_a_root_is_400_and_too_many_files_413(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(BadRequest) as e:
        Library([root]).expand(["nope.jpg"], IMAGES, max_items=10)
    assert e.value.code == "path_not_found"
    with pytest.raises(PayloadTooLarge):
        Library([root]).expand([str(root)], IMAGES, max_items=2)


def test_reading_rechecks_where_a_path_resolves(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    lib = Library([root])
    (root / "swap.jpg").write_bytes(b"ok")
    with lib.open_checked(str(root / "swap.jpg")) as f:
        assert f.read() == b"ok"
    (root / "swap.jpg").unlink()
    (root / "swap.jpg").symlink_to(outside / "secret.jpg")
    with pytest.raises(PermissionError):
        lib.open_checked(str(root / "swap.jpg"))


def test_blobs_are_content_addressed_and_size_limited(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    sha, path, size = blobs.put(io.BytesIO(b"hello"), max_bytes=10)
    assert Path(path).name == sha and Path(path).read_bytes() == b"hello" and size == 5
    assert blobs.put(io.BytesIO(b"hello"), max_bytes=10)[1] == path
    with pytest.raises(PayloadTooLarge):
        blobs.put(io.BytesIO(b"x" * 11), max_bytes=10)
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == [sha]  # no half-written file left
    assert blobs.remove_unused(keep=set()) == 1


def test_kinds_from_names_and_from_content() -> None:
    assert [kind_of(n) for n in ("a.JPG", "b.webm", "c.flac", "d.txt")] == ["image", "video", "audio", "other"]
    assert sniff_kind(b"\xff\xd8\xff\xe0") == "image"
    assert sniff_kind(b"\x00\x00\x00\x18ftypisom") == "video"
    assert sniff_kind(b"RIFF\x00\x00\x00\x00WAVE") == "audio"
    assert sniff_kind(b"hello") == "other"
