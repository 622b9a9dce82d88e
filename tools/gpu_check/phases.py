"""The GPU check's measurements, one function per phase; each returns its part of the report.

They drive the stack through its public HTTP API only (the gateway's admin and caption routes, the
service's model host API and /metrics) and read the device through NVML themselves, so every figure
is what an operator would see, checked against the device.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

import stack

MiB = 2**20
SWAP_PAIR = ("blip-large", "blip2")
BIG = ("blip-large", "blip2", "qwen25vl")
VERSIONS_PROBE = (
    "import json, sys, torch, transformers; out = {'python': sys.version.split()[0], 'torch': torch.__version__, "
    "'transformers': transformers.__version__, 'cuda_available': torch.cuda.is_available(), "
    "'torch_cuda': torch.version.cuda}\n"
    "if torch.cuda.is_available(): out['device_name'] = torch.cuda.get_device_name(0)\n"
    "print(json.dumps(out))"
)
# A cold swap-in's parts that the service does not time separately: the framework imports and the
# CUDA context, measured in a fresh process of the same interpreter.
COLD_PROBE = (
    "import json, time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter()\n"
    "from transformers import BlipForConditionalGeneration; t2 = time.perf_counter(); ctx = None\n"
    "if torch.cuda.is_available():\n"
    "    torch.cuda.init(); torch.empty(1, device='cuda:0'); torch.cuda.synchronize(); ctx = time.perf_counter() - t2\n"
    "print(json.dumps({'import_torch_s': t1 - t0, 'import_transformers_s': t2 - t1, 'cuda_context_s': ctx}))"
)
BALLAST = (
    "import sys, torch; x = torch.empty(int(sys.argv[1]), dtype=torch.uint8, device='cuda:0'); "
    "torch.cuda.synchronize(); print('ready', flush=True); sys.stdin.read()"
)


def default_models_dir(check: Any) -> Path:
    shm = Path("/dev/shm")
    if not check.rehearsal and shm.is_dir() and shutil.disk_usage(shm).free > 40 * 2**30:
        return shm / "roundhouse-gpu-check-models"
    return check.work / "models"


def write_catalog(check: Any, path: Path, only: tuple[str, ...] | None = None, fallback: bool | None = None) -> Path:
    """The check's catalog: everything on cuda:0; the anchor pinned (the worker and its CUDA context stay
    up between swaps); blip-large twice, at max_batch 16 and 1. The rehearsal allows the CPU fallback."""
    allow = check.rehearsal if fallback is None else fallback
    m = check.models
    rows = [("anchor", m["anchor"], 1, {"pin": True}), ("blip-large", m["blip-large"], 16, {}),
            ("blip-large-b1", m["blip-large"], 1, {}), ("blip2", m["blip2"], 8, {}), ("qwen25vl", m["qwen25vl"], 4, {})]
    lines = ["models:\n"]
    for name, built, max_batch, extra in rows:
        if only and name not in only:
            continue
        estimate = max(64, int(built["weights_bytes"] * 1.3 / MiB))
        lines.append(f"  - {{id: {name}, family: caption, backend: {built['backend']}, source: {json.dumps(built['dir'])}, "
                     f"device: 'cuda:0', dtype: {built['dtype']}, allow_cpu_fallback: {str(allow).lower()}, "
                     f"memory_estimate_mb: {estimate}, max_batch: {max_batch}, max_wait_ms: 20, "
                     f"pin: {str(extra.get('pin', False)).lower()}, options: {{max_new_tokens: 16}}}}\n")
    path.write_text("".join(lines))
    return path


def image_bytes(seed: int = 0) -> bytes:
    from PIL import Image

    img = Image.radial_gradient("L").resize((640, 480)).convert("RGB")
    img = Image.merge("RGB", [c.point(lambda v, k=k: (v * (k + 2) + seed * 37) % 256) for k, c in enumerate(img.split())])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def client(timeout_s: float = 600) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=timeout_s, limits=httpx.Limits(max_connections=64))


async def admin(c: httpx.AsyncClient, gw: str, action: str, model: str) -> tuple[dict, float]:
    t = time.monotonic()
    params = {"drain": "true"} if action == "unload" else None
    r = await c.post(f"{gw}/admin/models/{model}/{action}", params=params)
    wall = time.monotonic() - t
    if r.status_code != 200:
        raise RuntimeError(f"{action} {model}: {r.status_code} {r.text[:500]}")
    return r.json(), wall


async def caption(c: httpx.AsyncClient, gw: str, model: str, image: bytes) -> tuple[int, str | None]:
    r = await c.post(f"{gw}/v1/images/captions", data={"model": model}, files={"file": ("i.jpg", image, "image/jpeg")})
    code = None
    if r.status_code != 200:
        try:
            code = r.json()["error"]["code"]
        except Exception:
            code = r.text[:200]
    return r.status_code, code


async def many(c: httpx.AsyncClient, gw: str, models: list[str], concurrency: int) -> tuple[list[tuple[int, str | None]], float]:
    """Send one caption request per entry of ``models``, in that order, ``concurrency`` at a time."""
    sem = asyncio.Semaphore(concurrency)
    images = [image_bytes(i) for i in range(8)]

    async def one(i: int, m: str) -> tuple[int, str | None]:
        async with sem:
            return await caption(c, gw, m, images[i % len(images)])

    t = time.monotonic()
    tasks = []
    for i, m in enumerate(models):
        tasks.append(asyncio.create_task(one(i, m)))
        await asyncio.sleep(0)  # start them in order
    results = await asyncio.gather(*tasks)
    return list(results), time.monotonic() - t


async def service_metrics(check: Any) -> str:
    async with client(10) as c:
        return (await c.get(f"{check.caption.url}/metrics")).text


# --- phases ----------------------------------------------------------------------------------------


async def footprints(check: Any) -> dict:
    """Each model loaded with the anchor resident: the service's measured peak against NVML's delta."""
    gw, gpu, out = check.gateway.url, check.gpu, {}
    async with client() as c:
        for name in ("anchor", *BIG):
            used0 = gpu.used()
            with stack.Watch(gpu) as w:
                row, wall = await admin(c, gw, "load", name)
            used1 = gpu.used()
            entry = {"device_requested": row["device_requested"], "device": row["device"],
                     "peak_memory_bytes": row["peak_memory_bytes"], "memory_bytes": row["memory_bytes"],
                     "nvml_delta_bytes": used1 - used0, "nvml_peak_delta_bytes": w.peak - used0,
                     "load_s": row["load_s"], "warmup_s": row["warmup_s"], "wall_s": round(wall, 3)}
            entry["peak_over_nvml_peak"] = round(row["peak_memory_bytes"] / entry["nvml_peak_delta_bytes"], 3) \
                if entry["nvml_peak_delta_bytes"] > 0 else None
            if name != "anchor":
                released, _ = await admin(c, gw, "unload", name)
                entry["release_verified"] = released["verified"]
            out[name] = entry
    check.footprints = out
    return out


async def swap_in(check: Any) -> dict:
    """A cold swap-in (no worker: process start, imports, CUDA context, weights, warm-up) and a warm one."""
    gw = check.gateway.url
    async with client() as c:
        await admin(c, gw, "unload", "anchor")  # the last model: the worker ends
        models = (await c.get(f"{check.caption.url}/v1/models")).json()
        if models.get("worker_pid") is not None:
            raise RuntimeError(f"the worker is still up after the last unload (pid {models['worker_pid']})")
        python_start = _timed([check.caption_python, "-c", "pass"], check)
        probe = json.loads(_run([check.caption_python, "-c", COLD_PROBE], check).strip().splitlines()[-1])
        row, wall = await admin(c, gw, "load", "blip-large")
        imports = probe["import_torch_s"] + probe["import_transformers_s"]
        ctx = probe["cuda_context_s"] or 0.0
        cold = {"total_s": round(wall, 3), "load_s": row["load_s"], "warmup_s": row["warmup_s"],
                "process_start_s": round(max(0.0, wall - row["load_s"] - row["warmup_s"]), 3),
                "python_start_s": round(python_start, 3), "imports_s": round(imports, 3),
                "cuda_context_s": probe["cuda_context_s"],
                "weights_s": round(max(0.0, row["load_s"] - imports - ctx), 3)}
        await admin(c, gw, "unload", "blip-large")
        await admin(c, gw, "load", "anchor")
        row, wall = await admin(c, gw, "load", "blip-large")
        warm = {"total_s": round(wall, 3), "weights_s": row["load_s"], "warmup_s": row["warmup_s"],
                "other_s": round(max(0.0, wall - row["load_s"] - row["warmup_s"]), 3)}
        await admin(c, gw, "unload", "blip-large")
    return {"model": "blip-large", "cold": cold, "warm": warm,
            "how": "cold total = gateway admin load with no worker; load_s/warmup_s from the service; imports and "
                   "CUDA context from a fresh process of the same interpreter; weights = load_s - imports - context"}


async def release(check: Any) -> dict:
    """N unload/load cycles of the swap pair with the anchor resident: each unload timed by the gateway
    (request to verified free memory), by the caller, and by this process watching NVML."""
    gw, gpu, cycles = check.gateway.url, check.gpu, []
    reserve = 150 if not check.rehearsal else 60  # for the phases after this one
    async with client() as c:
        for i in range(check.args.swaps):
            if check.left() < reserve:
                break
            model = SWAP_PAIR[i % 2]
            used0 = gpu.used()
            row, load_wall = await admin(c, gw, "load", model)
            used1 = gpu.used()
            seen: dict[str, float | None] = {}
            target = used0 + (used1 - used0) // 5  # 80 % of what the load took is back
            watcher = threading.Thread(target=lambda: seen.update(s=stack.until_back(gpu, target, 30.0)))
            watcher.start()
            released, wall = await admin(c, gw, "unload", model)
            watcher.join()
            cycles.append({"model": model, "load_wall_s": round(load_wall, 3), "verified": released["verified"],
                           "gateway_s": round(released["seconds"], 4), "wall_s": round(wall, 4),
                           "nvml_observed_s": None if seen.get("s") is None else round(seen["s"], 4),
                           "freed_bytes": released["freed_bytes"], "nvml_delta_bytes": used1 - used0,
                           "detail": released["detail"]})
    gateway_s = [x["gateway_s"] for x in cycles]
    p = stack.percentiles(gateway_s)
    return {"swaps": len(cycles), "asked": check.args.swaps, "models": list(SWAP_PAIR),
            "unverified": sum(not x["verified"] for x in cycles), "gateway_s": p,
            "wall_s": stack.percentiles([x["wall_s"] for x in cycles]),
            "nvml_observed_s": stack.percentiles([x["nvml_observed_s"] for x in cycles if x["nvml_observed_s"] is not None]),
            "load_wall_s": {m: stack.percentiles([x["load_wall_s"] for x in cycles if x["model"] == m]) for m in SWAP_PAIR},
            "fixed_sleep_s": 3.0, "p95_vs_fixed_sleep": None if p["p95"] is None else round(p["p95"] / 3.0, 4),
            "cycles": cycles}


async def throughput(check: Any) -> dict:
    """blip-large at max_batch 1 against max_batch 16: the same images, the same concurrency."""
    gw, out = check.gateway.url, {}
    n, conc = (16, 8) if check.rehearsal else (96, 32)
    async with client() as c:
        for model in ("blip-large-b1", "blip-large"):
            await admin(c, gw, "load", model)
            await many(c, gw, [model] * conc, conc)  # warm the batch shapes
            results, wall = await many(c, gw, [model] * n, conc)
            out[model] = {"images": n, "concurrency": conc, "ok": sum(s == 200 for s, _ in results),
                          "seconds": round(wall, 3), "images_per_s": round(n / wall, 2)}
            await admin(c, gw, "unload", model)
    out["batching_gain"] = round(out["blip-large"]["images_per_s"] / out["blip-large-b1"]["images_per_s"], 2)
    return out


async def admission(check: Any) -> dict:
    """The gateway restarted with a budget that fits the anchor and one big model: a mixed trace swaps
    through them; no OOM, and the device's used bytes stay within the budget (NVML, polled)."""
    peaks = {m: check.footprints[m]["peak_memory_bytes"] for m in BIG}
    budget = check.footprints["anchor"]["peak_memory_bytes"] + max(peaks.values()) + min(peaks.values()) // 2
    budget_mb = max(1, budget // MiB)
    check.gateway.stop()
    check.gateway = stack.start_gateway(check.python, check.work / "catalog.yaml", check.caption.url, check.logs,
                                        check.env(), check.work / "gateway-data", name="gateway-admission",
                                        memory_budget_mb=json.dumps({"cuda:0": budget_mb}),
                                        release_timeout_s=str(check.args.release_timeout_s))
    check.procs.append(check.gateway)
    gw = check.gateway.url
    trace = [m for m, k in [("blip-large", 4), ("blip2", 4), ("qwen25vl", 4), ("blip-large", 2), ("qwen25vl", 2),
                            ("blip2", 2), ("blip-large", 2), ("blip2", 2), ("qwen25vl", 2)] for _ in range(k)]
    async with client() as c:
        await admin(c, gw, "load", "anchor")
        swaps0 = (await c.get(f"{gw}/admin/gpu")).json()
        oom0 = stack.metric_sum(await service_metrics(check), "roundhouse_model_oom_events_total")
        with stack.Watch(check.gpu) as w:
            results, wall = await many(c, gw, trace, 4)
        after = (await c.get(f"{gw}/admin/gpu")).json()
    oom = stack.metric_sum(await service_metrics(check), "roundhouse_model_oom_events_total") - oom0
    statuses: dict[str, int] = {}
    for s, code in results:
        key = str(s) if code is None else f"{s} {code}"
        statuses[key] = statuses.get(key, 0) + 1
    over = (w.peak - check.baseline_used) - budget
    return {"budget_bytes": budget, "footprints": peaks, "requests": len(trace), "seconds": round(wall, 2),
            "statuses": statuses, "oom_errors": sum(code == "out_of_memory" for _, code in results),
            "service_oom_events": oom, "swaps": after["devices"]["cuda:0"]["swaps"] - swaps0["devices"]["cuda:0"]["swaps"],
            "unverified_releases": after["unverified_releases"] - swaps0["unverified_releases"],
            "device_peak_used_bytes": w.peak, "device_peak_above_baseline_bytes": w.peak - check.baseline_used,
            "device_over_budget_bytes": over, "within_budget": over <= 0}


async def oom_split(check: Any) -> dict:
    """blip-large (max_batch 16) with the card filled by a ballast process but for room for about a
    quarter of a full batch: the full batch runs out of memory, splits, and every item succeeds."""
    gw = check.gateway.url
    fp = check.footprints["blip-large"]
    per_item = max(16 * MiB, fp["peak_memory_bytes"] - fp["memory_bytes"])  # the warm-up's one-image transient
    ballast = None
    out: dict[str, Any] = {"batch": 16, "per_item_transient_bytes": per_item}
    async with client() as c:
        await admin(c, gw, "load", "blip-large")
        if check.rehearsal:
            out["ballast_bytes"] = None
            out["why_no_ballast"] = "rehearsal: no CUDA device to fill; the batch is sent to prove the plumbing"
        else:
            desc = check.gpu.describe()
            room = per_item * 4 + 256 * MiB
            size = desc["total_bytes"] - desc["used_bytes"] - room
            ballast = subprocess.Popen([check.caption_python, "-c", BALLAST, str(size)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, env=check.env(), text=True)
            if ballast.stdout.readline().strip() != "ready":
                raise RuntimeError("the ballast process could not take the card's memory")
            out["ballast_bytes"], out["room_left_bytes"] = size, room
        try:
            oom0 = stack.metric_sum(await service_metrics(check), "roundhouse_model_oom_events_total")
            results, wall = await many(c, gw, ["blip-large"] * 16, 16)
            oom = stack.metric_sum(await service_metrics(check), "roundhouse_model_oom_events_total") - oom0
        finally:
            if ballast is not None:
                ballast.communicate("", timeout=30)
        await admin(c, gw, "unload", "blip-large")
    out.update({"ok": sum(s == 200 for s, _ in results), "failed": [c for s, c in results if s != 200],
                "service_oom_events": oom, "triggered": oom > 0, "seconds": round(wall, 2)})
    out["split_and_all_succeeded"] = out["triggered"] and out["ok"] == 16
    return out


async def readiness(check: Any) -> dict:
    """cuda asked, cuda got (every load above); and a service that cannot see CUDA refuses a cuda model
    whose catalog does not allow the fallback, instead of running it on CPU."""
    got = {m: {"asked": f["device_requested"], "got": f["device"]} for m, f in check.footprints.items()}
    catalog = write_catalog(check, check.work / "no-fallback.yaml", only=("anchor",), fallback=False)
    svc = stack.start_caption_svc(check.caption_python, catalog, check.logs, check.env(CUDA_VISIBLE_DEVICES=""),
                                  name="caption-svc-nocuda")
    check.procs.append(svc)
    try:
        async with client(300) as c:
            r = await c.post(f"{svc.url}/v1/models/anchor/load")
        body = r.json()
    finally:
        svc.stop()
    error = body.get("error", {}) if isinstance(body, dict) else {}
    refused = r.status_code >= 400 and error.get("code") == "model_load_failed"
    return {"cuda_asked_cuda_got": got, "all_on_cuda": all(v["got"] == "cuda:0" for v in got.values()),
            "forced_fallback": {"status": r.status_code, "code": error.get("code"),
                                "message": error.get("message"), "refused": refused}}


def face(check: Any) -> dict:
    probe = subprocess.run([check.caption_python, "-c", "import json, onnxruntime as o; "
                            "print(json.dumps([o.__version__, o.get_available_providers()]))"],
                           capture_output=True, text=True, env=check.env(), timeout=60)
    ort = json.loads(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0 else None
    return {"ran": False, "onnxruntime": ort,
            "why": "face-svc needs onnxruntime-gpu on a GPU; its wheel (onnxruntime_gpu 1.31.1, cp312 manylinux) is "
                   "244 MiB, over the 64 MiB a device call carries, and it is built for CUDA 12 while the device "
                   "image has CUDA 13 libraries"}


def _run(argv: list[str], check: Any) -> str:
    return subprocess.run(argv, capture_output=True, text=True, env=check.env(), timeout=300, check=True).stdout


def _timed(argv: list[str], check: Any) -> float:
    t = time.monotonic()
    _run(argv, check)
    return time.monotonic() - t
