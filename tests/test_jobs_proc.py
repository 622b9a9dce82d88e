"""Bulk jobs through a real gateway driving the real caption service (tiny BLIP), both processes on
loopback: library folders and uploads, deduplication, the library boundary, cancel, delete, server-sent
progress, a generated video, resuming after ``kill -9``, and the ``roundhouse`` command line."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import sqlite3
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests import procs
from tests.jobs_fixtures import (all_results, kill9, make_video, photo, photos, roundhouse, sse_events,
                                 start_jobs_gateway, wait_job)

pytestmark = pytest.mark.proc


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("library")
    (tmp_path_factory.getbasetemp() / "private").mkdir(exist_ok=True)
    (tmp_path_factory.getbasetemp() / "private" / "secret.jpg").write_bytes(photo(999))
    return root


@pytest.fixture(scope="module")
def jobs_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs-data")


@pytest.fixture(scope="module")
def jobs_gateway(tiny_catalog: Path, caption_svc: procs.Proc, logdir: Path, library: Path,
                 jobs_data: Path) -> Iterator[procs.Proc]:
    p = start_jobs_gateway(tiny_catalog, {"caption": caption_svc.url}, logdir, roots=[library], data_dir=jobs_data)
    yield p
    p.stop()


def submit(gw: procs.Proc, **body) -> dict:
    r = httpx.post(gw.url + "/v1/jobs", json=body, timeout=60)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    return r.json()


def assert_one_outcome_per_item(gw: procs.Proc, job: dict) -> list[dict]:
    rows = all_results(gw.url, job["id"])
    assert [r["seq"] for r in rows] == list(range(job["counts"]["total"]))
    c = job["counts"]
    assert c["pending"] == 0 and c["done"] + c["error"] + c["cancelled"] == c["total"]
    return rows


def test_caption_job_over_a_folder_captions_every_photo_and_the_same_photo_once(jobs_gateway: procs.Proc, library: Path) -> None:
    folder = library / "holiday"
    photos(folder, 6)
    (folder / "copy-a.jpg").write_bytes((folder / "img0001.jpg").read_bytes())
    (folder / "sub").mkdir()
    (folder / "sub" / "copy-b.jpg").write_bytes((folder / "img0001.jpg").read_bytes())
    (folder / "notes.txt").write_text("not a photo")
    job = submit(jobs_gateway, task="caption", paths=["holiday"])
    assert job["state"] in ("queued", "running") and job["counts"]["total"] == 8
    done = wait_job(jobs_gateway.url, job["id"])
    assert done["state"] == "completed", done
    assert done["counts"]["done"] == 8 and done["counts"]["deduplicated"] == 2
    assert done["rate_per_s"] > 0 and done["eta_s"] == 0.0
    rows = assert_one_outcome_per_item(jobs_gateway, done)
    by_name = {Path(r["source"]).name: r for r in rows}
    same = [by_name[n] for n in ("img0001.jpg", "copy-a.jpg", "copy-b.jpg")]
    assert len({r["sha256"] for r in same}) == 1 and len({r["result"]["caption"] for r in same}) == 1
    assert sum(r["reused"] for r in same) == 2
    assert all(r["result"]["caption"].strip() for r in rows)

    # The same photos again: every result is already known, nothing is inferred.
    again = wait_job(jobs_gateway.url, submit(jobs_gateway, task="caption", paths=["holiday/*.jpg"])["id"])
    assert again["counts"]["done"] == 7 and again["counts"]["deduplicated"] == 7

    # The exports: JSON lines and CSV, one row per photo.
    lines = httpx.get(f"{jobs_gateway.url}/v1/jobs/{done['id']}/results", params={"format": "jsonl"}).text.splitlines()
    assert [json.loads(x)["seq"] for x in lines] == list(range(8))
    table = list(csv.DictReader(io.StringIO(httpx.get(f"{jobs_gateway.url}/v1/jobs/{done['id']}/results",
                                                      params={"format": "csv"}).text)))
    assert len(table) == 8 and all(row["caption"] for row in table) and table[0]["state"] == "done"
    assert {j["id"] for j in httpx.get(jobs_gateway.url + "/v1/jobs").json()["data"]} >= {done["id"], again["id"]}


def test_uploaded_files_each_end_with_a_result_or_an_error(jobs_gateway: procs.Proc) -> None:
    files = [("file", ("a.jpg", photo(101))), ("file", ("b.jpg", photo(102))), ("file", ("broken.png", b"not an image")),
             ("file", ("song.mp3", b"ID3 no audio really"))]
    r = httpx.post(jobs_gateway.url + "/v1/jobs", files=files, data={"task": "caption", "max_new_tokens": "4"}, timeout=60)
    assert r.status_code == 201, r.text
    assert r.json()["options"] == {"max_new_tokens": 4}
    job = wait_job(jobs_gateway.url, r.json()["id"])
    rows = assert_one_outcome_per_item(jobs_gateway, job)
    assert [r["state"] for r in rows] == ["done", "done", "error", "error"]
    assert [r["source"] for r in rows] == ["a.jpg", "b.jpg", "broken.png", "song.mp3"]
    assert rows[2]["error"]["code"] == "unsupported_media_type"
    assert rows[3]["error"]["code"] == "unsupported_input"
    assert all(1 <= r["result"]["tokens"] <= 4 for r in rows[:2])


@pytest.mark.parametrize("spec", ["/etc/passwd", "../private/secret.jpg", "holiday/../../private", "{base}/private/*.jpg",
                                  "link-out/secret.jpg", "{root}-evil"])
def test_paths_outside_the_library_are_refused_with_403_and_no_job(jobs_gateway: procs.Proc, library: Path, spec: str) -> None:
    base = library.parent
    if not (library / "link-out").exists():
        (library / "link-out").symlink_to(base / "private", target_is_directory=True)
    (base / f"{library.name}-evil").mkdir(exist_ok=True)
    before = len(httpx.get(jobs_gateway.url + "/v1/jobs", params={"limit": "1000"}).json()["data"])
    r = httpx.post(jobs_gateway.url + "/v1/jobs", json={"task": "caption", "paths": [spec.format(base=base, root=library)]})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "outside_library" and r.json()["src"] == "gateway"
    assert len(httpx.get(jobs_gateway.url + "/v1/jobs", params={"limit": "1000"}).json()["data"]) == before


@pytest.mark.parametrize("body,status,code", [
    ({"task": "paint", "paths": ["x"]}, 400, "unknown_task"),
    ({"task": "caption", "model": "no-such-model", "paths": ["x"]}, 404, "model_not_found"),
    ({"task": "caption"}, 400, "no_inputs"),
    ({"task": "caption", "paths": ["nowhere/at/all.jpg"]}, 400, "path_not_found"),
    ({"task": "caption", "paths": ["x"], "options": {"colour": "red"}}, 400, "bad_request"),
    ({"task": "caption", "paths": ["x"], "options": {"max_new_tokens": 0}}, 400, "bad_request"),
    ({"task": "transcribe", "paths": ["x"]}, 400, "no_default_model"),  # no asr model in this catalog
])
def test_bad_job_requests_get_their_envelope(jobs_gateway: procs.Proc, body: dict, status: int, code: str) -> None:
    r = httpx.post(jobs_gateway.url + "/v1/jobs", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


JOB_ROUTES = [("GET", ""), ("GET", "/results"), ("GET", "/events"), ("GET", "/people"), ("POST", "/cancel"),
              ("POST", "/inputs"), ("DELETE", "")]


def assert_gone(gw: procs.Proc, job_id: str) -> None:
    for method, path in JOB_ROUTES:
        r = httpx.request(method, f"{gw.url}/v1/jobs/{job_id}{path}", timeout=30,
                          **({"json": {"paths": ["x"]}} if path == "/inputs" else {}))
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found", (method, path, r.text)


def test_unknown_jobs_are_404(jobs_gateway: procs.Proc) -> None:
    assert_gone(jobs_gateway, "job_nope")


def test_cancel_stops_the_job_and_records_every_other_item_as_cancelled(jobs_gateway: procs.Proc, library: Path) -> None:
    photos(library / "big", 500, start=10_000)
    job = submit(jobs_gateway, task="caption", paths=["big"])
    procs.wait_until(lambda: httpx.get(f"{jobs_gateway.url}/v1/jobs/{job['id']}").json()["counts"]["done"] >= 1, 60)
    r = httpx.post(f"{jobs_gateway.url}/v1/jobs/{job['id']}/cancel", timeout=30)
    assert r.status_code == 200, r.text
    cancelled = r.json()
    assert cancelled["state"] == "cancelled" and cancelled["counts"]["cancelled"] > 0
    rows = assert_one_outcome_per_item(jobs_gateway, cancelled)
    assert {r["state"] for r in rows} <= {"done", "cancelled"}
    assert httpx.get(f"{jobs_gateway.url}/v1/jobs/{job['id']}").json()["counts"] == cancelled["counts"]
    assert httpx.post(f"{jobs_gateway.url}/v1/jobs/{job['id']}/cancel").status_code == 200  # idempotent
    done = wait_job(jobs_gateway.url, submit(jobs_gateway, task="caption", paths=["big/img10000.jpg"])["id"])
    r = httpx.post(f"{jobs_gateway.url}/v1/jobs/{done['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"


def inferred_total(gw: procs.Proc) -> float:
    text = httpx.get(gw.url + "/metrics").text
    m = re.search(r'^roundhouse_jobs_items_total\{outcome="inferred",task="caption"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_deleting_a_running_job_stops_its_workers_and_leaves_nothing_but_what_another_job_holds(
        jobs_gateway: procs.Proc, library: Path, jobs_data: Path) -> None:
    shared = photos(library / "shared", 3, start=20_000)
    first = wait_job(jobs_gateway.url, submit(jobs_gateway, task="caption", paths=["shared"])["id"])
    assert first["state"] == "completed" and first["counts"]["done"] == 3
    # A long job of uploads, two of them the same photos as the finished job's.
    uploads = [p.read_bytes() for p in shared[:2]] + [photo(i) for i in range(21_000, 21_300)]
    r = httpx.post(jobs_gateway.url + "/v1/jobs", data={"task": "caption"}, timeout=120,
                   files=[("file", (f"u{i}.jpg", data)) for i, data in enumerate(uploads)])
    assert r.status_code == 201, r.text
    job = r.json()
    procs.wait_until(lambda: httpx.get(f"{jobs_gateway.url}/v1/jobs/{job['id']}").json()["counts"]["done"] >= 4, 120)

    deleted = httpx.delete(f"{jobs_gateway.url}/v1/jobs/{job['id']}", timeout=60)
    assert deleted.status_code == 204 and deleted.content == b"", deleted.text
    at_delete = inferred_total(jobs_gateway)
    assert_gone(jobs_gateway, job["id"])
    assert job["id"] not in {j["id"] for j in httpx.get(jobs_gateway.url + "/v1/jobs", params={"limit": "1000"}).json()["data"]}

    # The next job runs (the deleted one's slot is free) and, while it does, nothing of the deleted one
    # is inferred any more: its workers have stopped. Its shared photo is still known (deduplicated).
    after = wait_job(jobs_gateway.url, submit(jobs_gateway, task="caption",
                                              paths=[str(shared[0]), str(photos(library / "after", 1, start=22_000)[0])])["id"])
    assert after["state"] == "completed" and after["counts"]["deduplicated"] == 1
    assert inferred_total(jobs_gateway) == at_delete + 1
    rows = assert_one_outcome_per_item(jobs_gateway, wait_job(jobs_gateway.url, first["id"]))
    assert all(r["result"]["caption"] for r in rows)  # the finished job's results are whole

    # Nothing of the deleted job is left: no rows, no results only it held, no uploaded files.
    db = sqlite3.connect(f"file:{jobs_data / 'jobs' / 'jobs.sqlite3'}?mode=ro", uri=True)
    try:
        for table, column in (("jobs", "id"), ("items", "job_id"), ("people", "job_id")):
            assert db.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (job["id"],)).fetchone()[0] == 0, table
        orphans = db.execute("SELECT COUNT(*) FROM results WHERE part_of_job IS NULL AND NOT EXISTS "
                             "(SELECT 1 FROM items WHERE items.result_key = results.key)").fetchone()[0]
        assert orphans == 0
        assert db.execute("SELECT COUNT(*) FROM results WHERE part_of_job = ?", (job["id"],)).fetchone()[0] == 0
    finally:
        db.close()
    blobs = jobs_data / "jobs" / "blobs"
    assert not [d for d in uploads if (blobs / hashlib.sha256(d).hexdigest()).exists()]


def test_events_stream_progress_until_the_job_ends(jobs_gateway: procs.Proc, library: Path) -> None:
    photos(library / "events", 24, start=2000)
    job = submit(jobs_gateway, task="caption", paths=["events"])
    events = list(sse_events(jobs_gateway.url, job["id"]))
    kinds = [e for e, _ in events]
    assert kinds[-1] == "end" and set(kinds[:-1]) == {"progress"}
    finished = [d["counts"]["total"] - d["counts"]["pending"] for _, d in events]
    assert finished == sorted(finished) and finished[-1] == 24
    assert len(set(finished)) >= 2, "no progress between the first and the last event"
    assert events[-1][1]["state"] == "completed"


def test_a_video_is_captioned_at_its_scene_changes(jobs_gateway: procs.Proc, library: Path) -> None:
    (library / "videos").mkdir()
    make_video(library / "videos" / "party.mp4", [(255, 0, 0), (0, 255, 0), (0, 0, 255)], scene_s=1.0)
    webm = make_video(library.parent / "upload.webm", [(20, 20, 20), (240, 240, 240)], scene_s=1.5)
    r = httpx.post(jobs_gateway.url + "/v1/jobs", data={"task": "caption", "path": "videos"},
                   files=[("file", ("clip.webm", webm.read_bytes()))], timeout=60)
    assert r.status_code == 201, r.text
    job = wait_job(jobs_gateway.url, r.json()["id"])
    rows = assert_one_outcome_per_item(jobs_gateway, job)
    assert [r["kind"] for r in rows] == ["video", "video"] and all(r["state"] == "done" for r in rows)
    party = next(r for r in rows if r["source"].endswith("party.mp4"))["result"]
    assert [k["t_s"] for k in party["keyframes"]] == [0.0, 1.0, 2.0]
    assert all(k["caption"].strip() for k in party["keyframes"]) and abs(party["duration_s"] - 3.0) < 0.1
    clip = next(r for r in rows if r["source"] == "clip.webm")["result"]
    assert [k["t_s"] for k in clip["keyframes"]] == [0.0, 1.5]
    table = list(csv.DictReader(io.StringIO(httpx.get(f"{jobs_gateway.url}/v1/jobs/{job['id']}/results",
                                                      params={"format": "csv"}).text)))
    assert [row["t_s"] for row in table if row["source"].endswith("party.mp4")] == ["0.0", "1.0", "2.0"]


def test_killing_the_gateway_mid_job_loses_nothing_and_doubles_nothing(
        tiny_catalog: Path, caption_svc: procs.Proc, logdir: Path, tmp_path: Path) -> None:
    root = tmp_path / "library"
    photos(root / "many", 40, start=3000)
    (root / "many" / "again.jpg").write_bytes((root / "many" / "img3005.jpg").read_bytes())
    data = tmp_path / "data"
    gw = start_jobs_gateway(tiny_catalog, {"caption": caption_svc.url}, logdir, roots=[root], data_dir=data,
                            name="gateway-kill", jobs_concurrency="2")
    try:
        job = submit(gw, task="caption", paths=["many"])
        procs.wait_until(lambda: httpx.get(f"{gw.url}/v1/jobs/{job['id']}").json()["counts"]["done"] >= 3, 60)
        kill9(gw)
        gw = start_jobs_gateway(tiny_catalog, {"caption": caption_svc.url}, logdir, roots=[root], data_dir=data,
                                name="gateway-kill", jobs_concurrency="2")
        mid = httpx.get(f"{gw.url}/v1/jobs/{job['id']}").json()
        assert 3 <= mid["counts"]["done"] < 41 and mid["state"] in ("queued", "running")
        done = wait_job(gw.url, job["id"])
        assert done["state"] == "completed"
        assert done["counts"]["done"] == 41 and done["counts"]["error"] == 0 and done["counts"]["deduplicated"] == 1
        rows = assert_one_outcome_per_item(gw, done)
        assert len({r["source"] for r in rows}) == 41 and all(r["result"]["caption"] for r in rows)
        assert not list((data / "jobs" / "tmp").iterdir())
    finally:
        gw.stop()


def test_cli_submits_a_local_folder_shows_progress_and_gets_results(jobs_gateway: procs.Proc, tmp_path: Path) -> None:
    photos(tmp_path / "photos", 12, start=4000)
    (tmp_path / "photos" / "readme.txt").write_text("skipped")
    p = roundhouse("jobs", "submit", "--task", "caption", "--chunk-files", "5", str(tmp_path / "photos"), url=jobs_gateway.url)
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip().splitlines()[-1]
    assert job_id.startswith("job_")
    assert "12/12" in p.stderr and "completed" in p.stderr and "#" * 30 in p.stderr
    status = json.loads(roundhouse("jobs", "status", job_id, url=jobs_gateway.url).stdout)
    assert status["counts"]["done"] == 12 and not status["open"]
    out = tmp_path / "results.csv"
    assert roundhouse("jobs", "results", job_id, "--format", "csv", "-o", str(out), url=jobs_gateway.url).returncode == 0
    table = list(csv.DictReader(out.open()))
    assert sorted(r["source"] for r in table) == [f"img{i:04d}.jpg" for i in range(4000, 4012)]
    lines = roundhouse("jobs", "results", job_id, url=jobs_gateway.url).stdout.splitlines()
    assert len(lines) == 12 and all(json.loads(x)["result"]["caption"] for x in lines)
    assert job_id in roundhouse("jobs", "list", url=jobs_gateway.url).stdout


@pytest.fixture(scope="module")
def down_gateway(tiny_catalog: Path, logdir: Path, library: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    """A gateway whose caption service is not running: its jobs can only wait."""
    p = start_jobs_gateway(tiny_catalog, {"caption": f"http://127.0.0.1:{procs.free_port()}"}, logdir, roots=[library],
                           data_dir=tmp_path_factory.mktemp("down-data"), name="gateway-jobs-down", ready_path="/health/live")
    yield p
    p.stop()


def test_a_job_waits_while_its_service_is_down_and_cancels_cleanly(down_gateway: procs.Proc, library: Path) -> None:
    photos(library / "waiting", 5, start=6000)
    job = submit(down_gateway, task="caption", paths=["waiting"])
    procs.wait_until(lambda: "waiting" in httpx.get(f"{down_gateway.url}/v1/jobs/{job['id']}").json(), 60)
    status = httpx.get(f"{down_gateway.url}/v1/jobs/{job['id']}").json()
    assert status["state"] == "running" and status["counts"]["pending"] == 5, status
    assert status["waiting"]["retry_in_s"] >= 0 and status["waiting"]["reason"]
    cancelled = httpx.post(f"{down_gateway.url}/v1/jobs/{job['id']}/cancel", timeout=30).json()
    assert cancelled["state"] == "cancelled" and cancelled["counts"]["cancelled"] == 5


def test_cli_names_server_paths_cancels_and_deletes(down_gateway: procs.Proc, library: Path) -> None:
    photos(library / "cli-big", 10, start=5000)
    p = roundhouse("jobs", "submit", "--task", "caption", "--path", "cli-big", "--no-wait", url=down_gateway.url)
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip()
    assert job_id.startswith("job_") and "10 item(s)" in p.stderr
    c = roundhouse("jobs", "cancel", job_id, url=down_gateway.url)
    assert c.returncode == 0 and "cancelled" in c.stderr, c.stderr
    assert httpx.get(f"{down_gateway.url}/v1/jobs/{job_id}").json()["state"] == "cancelled"
    d = roundhouse("jobs", "delete", job_id, url=down_gateway.url)
    assert d.returncode == 0 and f"job {job_id} deleted" in d.stderr, d.stderr
    assert httpx.get(f"{down_gateway.url}/v1/jobs/{job_id}").status_code == 404
    again = roundhouse("jobs", "delete", job_id, url=down_gateway.url)
    assert again.returncode == 2 and "404 job_not_found" in again.stderr
    bad = roundhouse("jobs", "submit", "--task", "caption", "--path", "/etc", url=down_gateway.url)
    assert bad.returncode == 2 and "403 outside_library" in bad.stderr
    assert roundhouse("jobs", "status", "job_nope", url=down_gateway.url).returncode == 2


def test_job_metrics_are_exported(jobs_gateway: procs.Proc) -> None:
    text = httpx.get(jobs_gateway.url + "/metrics").text
    assert 'roundhouse_jobs_items_total{outcome="inferred",task="caption"}' in text
    assert "roundhouse_jobs_active " in text and "roundhouse_jobs_item_seconds_bucket" in text
