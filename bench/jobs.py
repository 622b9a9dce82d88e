"""Bulk jobs against the service called directly, and interactive latency while a job runs, in one run.

    .venvs/gateway/bin/python bench/jobs.py [--images 2000] [--interactive 40] [--think-ms 500]

Real processes on loopback: the caption service with the tiny BLIP (built locally, CPU) and the gateway
with a library root holding two sets of N distinct small JPEGs. Four phases, in this order:

1. direct: the service's POST /v1/captions called in a loop with batches of max_batch concurrent
   requests (send a batch, wait for all of it, repeat) over set A: the baseline a shell loop with the
   same batch size gets.
2. job: POST /v1/jobs over set A (a fresh gateway data directory, so nothing is deduplicated), timed
   from the POST until the job completed. Target: >= 80 % of the direct throughput.
3. idle: interactive captions through the gateway (POST /v1/images/captions), one at a time with an
   exponential think time between them (mean --think-ms: a person clicking through photos).
4. busy: the same while a job over set B is running (it started, and has items in flight, before the
   first interactive request). Target: p95 <= 1.5 x the idle p95. The job's own progress during the
   window is printed too: the gateway pauses bulk work during interactive bursts (GATEWAY_JOBS_YIELD_S).

Prints a table and one summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import machine, percentile  # noqa: E402
from tests import procs  # noqa: E402
from tests.jobs_fixtures import photo  # noqa: E402

MODEL = "tiny-blip"
TINY_DIR = ROOT / "build" / "tiny-models"


def write_set(folder: Path, n: int, start: int) -> list[bytes]:
    folder.mkdir(parents=True)
    out = []
    for i in range(start, start + n):
        data = photo(i)
        (folder / f"img{i:06d}.jpg").write_bytes(data)
        out.append(data)
    return out


async def direct(url: str, images: list[bytes], batch: int) -> float:
    async with aiohttp.ClientSession() as s:
        async def one(data: bytes) -> None:
            form = aiohttp.FormData()
            form.add_field("file", data, filename="image.jpg", content_type="application/octet-stream")
            form.add_field("model", MODEL)
            async with s.post(url + "/v1/captions", data=form) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"direct call answered {r.status}")
        t0 = time.perf_counter()
        for i in range(0, len(images), batch):
            await asyncio.gather(*(one(d) for d in images[i:i + batch]))
        return time.perf_counter() - t0


def run_job(url: str, folder: str, timeout_s: float) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/jobs", json={"task": "caption", "model": MODEL, "paths": [folder]}, timeout=120)
    r.raise_for_status()
    job_id = r.json()["id"]
    deadline = time.monotonic() + timeout_s
    while True:
        s = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        if s["state"] not in ("queued", "running"):
            return time.perf_counter() - t0, s
        if time.monotonic() > deadline:
            raise TimeoutError(f"job not done in {timeout_s} s: {s['counts']}")
        time.sleep(0.05)


def interactive(url: str, n: int, think_ms: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    lat = []
    with httpx.Client(timeout=120) as c:
        for i in range(n):
            data = photo(10_000_000 + seed * 100_000 + i)
            t0 = time.perf_counter()
            r = c.post(url + "/v1/images/captions", files={"file": ("p.jpg", data)}, data={"model": MODEL})
            lat.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"interactive caption answered {r.status_code}: {r.text[:200]}")
            time.sleep(rng.expovariate(1000.0 / think_ms) if think_ms > 0 else 0)
    return lat


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000, help="images per set (default: %(default)s)")
    p.add_argument("--interactive", type=int, default=40, help="interactive requests per phase (default: %(default)s)")
    p.add_argument("--think-ms", type=float, default=500.0, help="mean think time between interactive requests (default: %(default)s)")
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)

    print(f"jobs benchmark, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {machine()}")
    print(f"load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not (TINY_DIR / "catalog.yaml").exists():
        print(f"building the tiny models into {TINY_DIR} ...", flush=True)
        procs.build_tiny_models(TINY_DIR)
    catalog = TINY_DIR / "catalog.yaml"
    tmp = Path(tempfile.mkdtemp(prefix="rh-bench-jobs-"))
    lib, logs = tmp / "library", tmp / "logs"
    logs.mkdir()
    set_a = write_set(lib / "a", args.images, 0)
    write_set(lib / "b", args.images, 1_000_000)
    svc = gw = None
    started = time.monotonic()
    try:
        svc = procs.start_caption_svc(catalog, logs)
        httpx.post(f"{svc.url}/v1/models/{MODEL}/load", timeout=300).raise_for_status()
        batch = next(m["max_batch"] for m in httpx.get(svc.url + "/v1/models").json()["data"] if m["id"] == MODEL)
        gw = procs.start_gateway(catalog, {"caption": svc.url}, logs, library_roots=json.dumps([str(lib)]),
                                 data_dir=str(tmp / "data"))
        print(f"model {MODEL} on cpu, max_batch {batch}; {args.images} images per set; the job keeps 2 x max_batch items in flight",
              flush=True)

        asyncio.run(direct(svc.url, set_a[: batch * 4], batch))  # warm-up, unmeasured
        direct_s = asyncio.run(direct(svc.url, set_a, batch))
        print(f"  direct: {args.images} captions in {direct_s:.1f} s", flush=True)
        job_s, job = run_job(gw.url, "a", timeout_s=max(600.0, direct_s * 5))
        assert job["state"] == "completed" and job["counts"]["done"] == args.images, job
        print(f"  job: {args.images} captions in {job_s:.1f} s (state {job['state']}, {job['counts']['deduplicated']} deduplicated)",
              flush=True)

        idle = interactive(gw.url, args.interactive, args.think_ms, seed=1)
        print(f"  idle interactive: {len(idle)} requests", flush=True)
        r = httpx.post(gw.url + "/v1/jobs", json={"task": "caption", "model": MODEL, "paths": ["b"]}, timeout=120)
        job_b = r.json()["id"]
        procs.wait_until(lambda: httpx.get(f"{gw.url}/v1/jobs/{job_b}").json()["counts"]["done"] >= batch, 120)
        before = httpx.get(f"{gw.url}/v1/jobs/{job_b}").json()["counts"]["done"]
        t0 = time.perf_counter()
        busy = interactive(gw.url, args.interactive, args.think_ms, seed=2)
        window_s = time.perf_counter() - t0
        after = httpx.get(f"{gw.url}/v1/jobs/{job_b}").json()["counts"]["done"]
        httpx.post(f"{gw.url}/v1/jobs/{job_b}/cancel", timeout=60)
        print(f"  interactive while a job runs: {len(busy)} requests in {window_s:.1f} s; the job did {after - before} items meanwhile",
              flush=True)
    finally:
        for proc in (gw, svc):
            if proc is not None:
                proc.stop()
        if args.keep_logs:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    direct_rate, job_rate = args.images / direct_s, args.images / job_s
    ratio = job_rate / direct_rate
    idle_s, busy_s = sorted(idle), sorted(busy)
    p95_ratio = percentile(busy_s, 95) / percentile(idle_s, 95)
    print()
    print(f"{'phase':<34}{'images/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    print(f"{'direct loop, batches of ' + str(batch):<34}{direct_rate:>10.2f}")
    print(f"{'bulk job (gateway, bulk lane)':<34}{job_rate:>10.2f}")
    print(f"{'interactive, idle':<34}{'':>10}{statistics.median(idle):>9.1f}{percentile(idle_s, 95):>9.1f}{idle_s[-1]:>9.1f}")
    print(f"{'interactive, while a job runs':<34}{(after - before) / window_s:>10.2f}{statistics.median(busy):>9.1f}"
          f"{percentile(busy_s, 95):>9.1f}{busy_s[-1]:>9.1f}")
    print(f"whole run {time.monotonic() - started:.0f} s")
    ok = ratio >= 0.8 and p95_ratio <= 1.5
    print(f"jobs_throughput_ratio={ratio:.2f} (target >= 0.80) interactive_p95_ratio={p95_ratio:.2f} (target <= 1.50) "
          f"job_rate={job_rate:.2f}/s direct_rate={direct_rate:.2f}/s p95_idle_ms={percentile(idle_s, 95):.1f} "
          f"p95_busy_ms={percentile(busy_s, 95):.1f} {'PASS' if ok else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
