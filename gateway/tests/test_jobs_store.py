"""The job store: schema and migrations, exactly one outcome per item, counters, cancel, shared results."""

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
