"""The job store: schema and migrations, exactly one outcome per item, counters, cancel, shared results,
and deleting a job without taking what another job holds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.jobs.store import MIGRATIONS, JobStore, NewItem

pytestmark = pytest.mark.unit


def items(n: int, kind: str = "image") -> list[NewItem]:
    return [NewItem(source=f"p{i}.jpg", path=f"/lib/p{i}.jpg", upload=False, kind=kind) for i in range(n)]


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def test_new_database_is_in_wal_mode_at_the_latest_schema(store: JobStore) -> None:
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_reopening_applies_no_migration_twice_and_keeps_the_jobs(tmp_path: Path) -> None:
    s = JobStore(tmp_path / "j.db")
    s.create_job("job_a", "caption", "m", {}, items(2), open_=False)
    s.close()
    s2 = JobStore(tmp_path / "j.db")
    assert s2.get_job("job_a")["n_total"] == 2
    s2.close()


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "j.db")
    db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        JobStore(tmp_path / "j.db")


def test_an_item_is_finished_once_even_when_recorded_twice(store: JobStore) -> None:
    store.create_job("job_a", "caption", "m", {}, items(3), open_=False)
    assert store.finish_item("job_a", 0, sha256="s0", result_key="k0", body={"caption": "a"}) is True
    assert store.finish_item("job_a", 0, sha256="s0", result_key="k0", body={"caption": "a"}) is False
    assert store.finish_item("job_a", 0, sha256="s0", error=("boom", "late error")) is False
    job = store.get_job("job_a")
    assert (job["n_done"], job["n_error"]) == (1, 0)
    assert [i.seq for i in store.pending_items("job_a", after_seq=-1, limit=10)] == [1, 2]


def test_items_with_the_same_content_share_one_stored_result(store: JobStore) -> None:
    store.create_job("job_a", "caption", "m", {}, items(2), open_=False)
    store.finish_item("job_a", 0, sha256="s", result_key="caption:m:x:s", body={"caption": "first"})
    assert store.cached_result("caption:m:x:s") == {"caption": "first"}
    store.finish_item("job_a", 1, sha256="s", result_key="caption:m:x:s", body={"caption": "ignored"}, reused=True)
    rows = store.results_page("job_a", after_seq=-1, limit=10)
    assert [r["result"]["caption"] for r in rows] == ["first", "first"]
    assert store.get_job("job_a")["n_reused"] == 1
    assert store.db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1


def test_cancel_records_every_pending_item_as_cancelled_and_ends_the_job_once(store: JobStore) -> None:
    store.create_job("job_a", "caption", "m", {}, items(4), open_=False)
    store.finish_item("job_a", 0, sha256="s", result_key="k", body={})
    store.finish_item("job_a", 1, sha256=None, error=("unsupported_input", "no"))
    assert store.finish_job("job_a", "cancelled") is True
    assert store.finish_job("job_a", "completed") is False
    job = store.get_job("job_a")
    assert job["state"] == "cancelled"
    assert (job["n_done"], job["n_error"], job["n_cancelled"]) == (1, 1, 2)
    assert [r["state"] for r in store.results_page("job_a", after_seq=-1, limit=10)] == ["done", "error", "cancelled", "cancelled"]
    assert store.finish_item("job_a", 2, sha256="s", result_key="k", body={}) is False


def test_open_job_takes_items_until_closed(store: JobStore) -> None:
    store.create_job("job_a", "caption", "m", {}, items(1), open_=True)
    assert store.add_items("job_a", items(2), close=False)
    assert store.add_items("job_a", items(1), close=True)
    assert not store.add_items("job_a", items(1), close=False)
    job = store.get_job("job_a")
    assert (job["n_total"], job["open"]) == (4, False)
    assert [i.seq for i in store.pending_items("job_a", after_seq=-1, limit=10)] == [0, 1, 2, 3]


def test_people_are_stored_with_the_job_and_grouped(store: JobStore) -> None:
    store.create_job("job_f", "faces", "m", {}, items(2), open_=False)
    store.finish_item("job_f", 0, sha256="a", result_key="ka", body={"faces": [{}, {}]})
    store.finish_item("job_f", 1, sha256="b", result_key="kb", body={"faces": [{}]})
    store.finish_job("job_f", "completed", summary={"people": 2}, people=[(0, "0", 0), (0, "1", 1), (1, "0", 0)])
    assert store.people("job_f") == [
        {"person": 0, "faces": [{"seq": 0, "face": "0", "source": "p0.jpg"}, {"seq": 1, "face": "0", "source": "p1.jpg"}]},
        {"person": 1, "faces": [{"seq": 0, "face": "1", "source": "p0.jpg"}]},
    ]
    assert store.results_page("job_f", after_seq=-1, limit=1)[0]["people"] == {"0": 0, "1": 1}


def test_active_jobs_are_listed_oldest_first(store: JobStore) -> None:
    store.create_job("job_b", "caption", "m", {}, items(1), open_=False, now=2.0)
    store.create_job("job_a", "caption", "m", {}, items(1), open_=False, now=1.0)
    store.create_job("job_c", "caption", "m", {}, items(1), open_=False, now=3.0)
    store.finish_job("job_c", "cancelled")
    assert [j["id"] for j in store.active_jobs()] == ["job_a", "job_b"]
    assert [j["id"] for j in store.list_jobs()] == ["job_c", "job_b", "job_a"]


def test_deleting_a_job_removes_what_only_it_used_and_keeps_what_another_job_holds(store: JobStore) -> None:
    uploads = [NewItem("a.jpg", "/blobs/aaa", True, "image"), NewItem("v.mp4", "/blobs/vvv", True, "video")]
    store.create_job("job_a", "faces", "m", {}, uploads + items(1), open_=False)
    store.create_job("job_b", "faces", "m", {}, items(1), open_=False)
    store.finish_item("job_a", 0, sha256="shared", result_key="k:shared", body={"faces": [{}]})
    store.put_result("k:frame:1", {"faces": []}, part_of_job="job_a")  # a keyframe of job_a's video
    store.finish_item("job_a", 1, sha256="own", result_key="k:own", body={"keyframes": []})
    store.finish_item("job_a", 2, sha256="x", error=("corrupt_image", "no"))
    store.finish_job("job_a", "completed", summary={"people": 1}, people=[(0, "0", 0)])
    store.finish_item("job_b", 0, sha256="shared", result_key="k:shared", body={"faces": [{}]}, reused=True)
    store.put_result("k:frame:2", {"faces": []}, part_of_job="job_b")
    store.put_result("k:frame:legacy", {"faces": []})  # stored before parts had an owner: nobody's to remove

    assert store.delete_job("job_a") == {"/blobs/aaa", "/blobs/vvv"}
    assert store.get_job("job_a") is None and [j["id"] for j in store.list_jobs()] == ["job_b"]
    for table in ("items", "people"):
        assert store.db.execute(f"SELECT COUNT(*) FROM {table} WHERE job_id = 'job_a'").fetchone()[0] == 0, table
    keys = {r[0] for r in store.db.execute("SELECT key FROM results")}
    assert keys == {"k:shared", "k:frame:2", "k:frame:legacy"}
    assert store.results_page("job_b", after_seq=-1, limit=10)[0]["result"] == {"faces": [{}]}
    assert store.delete_job("job_a") is None


def test_an_active_job_is_not_deleted_until_it_has_ended(store: JobStore) -> None:
    store.create_job("job_a", "caption", "m", {}, items(2), open_=False)
    with pytest.raises(ValueError, match="queued"):
        store.delete_job("job_a")
    assert store.get_job("job_a")["n_total"] == 2
    store.finish_job("job_a", "cancelled")
    assert store.delete_job("job_a") == set()


def test_a_result_removed_with_its_job_is_stored_again_by_the_next_item_that_records_it(store: JobStore) -> None:
    """A job deleted while another job's worker holds the result it read from the store (reused): that
    worker's record stores the body again, so no item ever points at a missing result."""
    store.create_job("job_a", "caption", "m", {}, items(1), open_=False)
    store.create_job("job_b", "caption", "m", {}, items(1), open_=False)
    store.finish_item("job_a", 0, sha256="s", result_key="k:s", body={"caption": "a"})
    store.finish_job("job_a", "completed")
    body = store.cached_result("k:s")  # job_b's worker finds it...
    store.delete_job("job_a")          # ...job_a goes, and its only result with it...
    assert store.cached_result("k:s") is None
    store.finish_item("job_b", 0, sha256="s", result_key="k:s", body=body, reused=True)  # ...and job_b records it
    assert store.results_page("job_b", after_seq=-1, limit=1)[0]["result"] == {"caption": "a"}


def test_a_database_of_the_first_schema_is_migrated_with_its_results(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "j.db")
    db.executescript(MIGRATIONS[0] + ";PRAGMA user_version=1;")
    db.execute("INSERT INTO results (key, body, created_at) VALUES ('k', '{}', 0)")
    db.commit()
    db.close()
    s = JobStore(tmp_path / "j.db")
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert dict(s.db.execute("SELECT key, part_of_job FROM results").fetchone()) == {"key": "k", "part_of_job": None}
    s.close()
