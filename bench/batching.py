"""What dynamic batching buys: throughput and latency of the tiny BLIP caption model with batching
on (max_batch 8, max_wait_ms 5) and off (max_batch 1), through the real gateway and the real
caption service, on CPU.

    .venvs/gateway/bin/python bench/batching.py [--requests 400] [--concurrency 16]

For each setting: a fresh caption-svc (tiny catalog, one model: tiny-blip) and a fresh gateway in
front of it; the model is loaded through POST /admin/models/tiny-blip/load; a warm-up; then
``--requests`` POST /v1/images/captions (JSON, a base64 32x32 PNG) from ``--concurrency``
concurrent aiohttp clients (at least twice max_batch, so batches can fill). Reported: throughput,
p50/p95/p99 latency, and the mean batch size the service ran, read from its /metrics
(roundhouse_model_batch_size_sum / _count over the measured requests only).

The tiny models are built first (tools/make_tiny_models.py) when build/tiny-models lacks them.
Figures are reported, never asserted; the script exits 0 unless the run itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from harness import (CAPTION_PY, GATEWAY_PY, ROOT, Processes, free_port, http_call, machine, percentile,
                     tiny_png, wait_ready)

MODEL = "tiny-blip"
MAX_BATCH_ON = 8
MAX_WAIT_MS = 5
TINY_DIR = ROOT / "build" / "tiny-models"

CATALOG = """# written by bench/batching.py: the tiny BLIP model with batching {label}
models:
  - id: {model}
    family: caption
    backend: blip
    source: {source}
    device: cpu
    dtype: float32
    memory_estimate_mb: 64
    max_batch: {max_batch}
    max_wait_ms: {max_wait_ms}
    options: {{max_new_tokens: 8}}
"""


def ensure_tiny_models() -> Path:
    source = TINY_DIR / MODEL
    if not (source / "config.json").exists():
        print(f"building the tiny models into {TINY_DIR} ...", flush=True)
        subprocess.run([str(CAPTION_PY), str(ROOT / "tools" / "make_tiny_models.py"), str(TINY_DIR)], cwd=ROOT,
                       check=True, timeout=600)
    return source


def batch_counters(port: int) -> tuple[float, float]:
    """(sum, count) of roundhouse_model_batch_size for MODEL from the caption service's /metrics."""
    status, body = http_call(port, "GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"GET /metrics answered {status}")
    values = {}
    for suffix in ("sum", "count"):
        m = re.search(rf'^roundhouse_model_batch_size_{suffix}\{{[^}}]*model="{re.escape(MODEL)}"[^}}]*\}} (\S+)$',
                      body.decode(), re.MULTILINE)
        values[suffix] = float(m.group(1)) if m else 0.0
    return values["sum"], values["count"]


async def drive(port: int, body: bytes, *, requests: int, concurrency: int) -> tuple[float, list[float], dict[int, int]]:
    """``requests`` POSTs from ``concurrency`` workers; returns (wall seconds, sorted latencies in ms of
    the 200s, count per status)."""
    url = f"http://127.0.0.1:{port}/v1/images/captions"
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    remaining = requests
    timeout = aiohttp.ClientTimeout(total=120)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                payload = await resp.read()
            ms = (time.perf_counter() - t0) * 1000.0
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            if resp.status == 200:
                latencies.append(ms)
            elif statuses[resp.status] == 1:
                print(f"  first {resp.status} answer: {payload[:300]!r}", flush=True)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return wall, sorted(latencies), statuses


def run_setting(label: str, max_batch: int, *, tmp: Path, source: Path, body: bytes, requests: int,
                concurrency: int, warmup: int, torch_threads: int | None) -> dict:
    catalog = tmp / f"catalog-{label}.yaml"
    catalog.write_text(CATALOG.format(label=label, model=MODEL, source=source, max_batch=max_batch,
                                      max_wait_ms=MAX_WAIT_MS))
    svc_port, gw_port = free_port(), free_port()
    with Processes(tmp) as procs:
        svc_env = {"CAPTION_SVC_CATALOG": str(catalog), "CAPTION_SVC_PORT": str(svc_port),
                   "CAPTION_SVC_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if torch_threads is not None:  # inherited by the model worker, where torch reads it
            svc_env.update(OMP_NUM_THREADS=str(torch_threads), MKL_NUM_THREADS=str(torch_threads))
        procs.start(f"caption-svc-{label}", [CAPTION_PY, "-m", "caption_svc"], env=svc_env)
        procs.start(f"gateway-{label}", [GATEWAY_PY, "-m", "gateway"], env={
            "GATEWAY_CATALOG": str(catalog), "GATEWAY_PORT": str(gw_port), "GATEWAY_API_KEYS": "[]",
            "GATEWAY_SERVICES": json.dumps({"caption": f"http://127.0.0.1:{svc_port}"}), "GATEWAY_LOG_LEVEL": "WARNING"})
        wait_ready(procs, f"caption-svc-{label}", svc_port, "/health/ready", deadline_s=120)
        wait_ready(procs, f"gateway-{label}", gw_port, "/health/ready", deadline_s=60)
        t0 = time.perf_counter()
        status, answer = http_call(gw_port, "POST", f"/admin/models/{MODEL}/load", timeout_s=300)
        if status != 200:
            raise RuntimeError(f"loading {MODEL} answered {status}: {answer[:300]!r}\n{procs.log_tail(f'caption-svc-{label}')}")
        load_s = time.perf_counter() - t0
        asyncio.run(drive(gw_port, body, requests=warmup, concurrency=concurrency))
        sum0, count0 = batch_counters(svc_port)
        wall, lat, statuses = asyncio.run(drive(gw_port, body, requests=requests, concurrency=concurrency))
        sum1, count1 = batch_counters(svc_port)
        procs.check_alive()
    ok = statuses.get(200, 0)
    batches = count1 - count0
    return {
        "label": label, "max_batch": max_batch, "load_s": load_s, "ok": ok, "errors": requests - ok,
        "statuses": statuses, "wall_s": wall, "rps": ok / wall,
        "p50": percentile(lat, 50), "p95": percentile(lat, 95), "p99": percentile(lat, 99),
        "batches": batches, "mean_batch": (sum1 - sum0) / batches if batches else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="measured requests per setting (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=2 * MAX_BATCH_ON,
                        help="concurrent requests, at least twice max_batch (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=48, help="unmeasured requests first (default: %(default)s)")
    parser.add_argument("--torch-threads", default="1",
                        help="OMP_NUM_THREADS for the caption service's worker, or 'auto' to leave it unset (torch then "
                        "runs one thread per core, which on a small shared machine measures thread contention more "
                        "than batching; see bench/README.md) (default: %(default)s)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with every log")
    args = parser.parse_args(argv)
    if args.concurrency < 2 * MAX_BATCH_ON:
        print(f"note: concurrency {args.concurrency} is below twice max_batch ({2 * MAX_BATCH_ON}); batches cannot fill")

    torch_threads = None if args.torch_threads == "auto" else int(args.torch_threads)
    started = time.monotonic()
    source = ensure_tiny_models()
    tmp = Path(tempfile.mkdtemp(prefix="rh-bench-batching-"))
    body = json.dumps({"image": base64.b64encode(tiny_png(32)).decode(), "model": MODEL}).encode()
    print(f"batching benchmark, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {machine()}")
    print(f"load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          "(other work on the machine skews every figure)")
    print(f"model {MODEL} on cpu, max_wait_ms {MAX_WAIT_MS}; {args.requests} requests per setting at concurrency "
          f"{args.concurrency} through the gateway (POST /v1/images/captions, JSON, a 32x32 PNG); torch threads in "
          f"the worker: {torch_threads if torch_threads is not None else 'unset (torch default)'}")
    results = []
    try:
        for label, max_batch in (("on", MAX_BATCH_ON), ("off", 1)):
            r = run_setting(label, max_batch, tmp=tmp, source=source, body=body, requests=args.requests,
                            concurrency=args.concurrency, warmup=args.warmup, torch_threads=torch_threads)
            results.append(r)
            print(f"  batching {label}: done in {r['wall_s']:.1f} s (model load {r['load_s']:.1f} s)", flush=True)
    finally:
        if args.keep_logs:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"{'batching':<10}{'max_batch':>10}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'batches':>9}"
          f"{'mean batch':>12}{'errors':>8}")
    for r in results:
        print(f"{r['label']:<10}{r['max_batch']:>10}{r['rps']:>9.1f}{r['p50']:>9.1f}{r['p95']:>9.1f}{r['p99']:>9.1f}"
              f"{r['batches']:>9.0f}{r['mean_batch']:>12.2f}{r['errors']:>8}")
    on, off = results
    for r in results:
        if r["errors"]:
            print(f"WARNING: batching {r['label']}: {r['errors']} requests did not answer 200: {r['statuses']}")
    print(f"whole run {time.monotonic() - started:.0f} s")
    print(f"batching_speedup={on['rps'] / off['rps']:.2f} p95_on_ms={on['p95']:.1f} p95_off_ms={off['p95']:.1f} "
          f"mean_batch_on={on['mean_batch']:.2f} mean_batch_off={off['mean_batch']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
