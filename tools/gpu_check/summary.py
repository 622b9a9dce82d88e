"""The GPU check's short text summary, written from its report (report.json holds every figure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

GiB = 2**30


def _gib(n: Any) -> str:
    return "-" if n is None else f"{n / GiB:.2f} GiB"


def _s(p: dict | None) -> str:
    if not p or not p.get("n"):
        return "no samples"
    return f"p50 {p['p50']:.3f} s, p95 {p['p95']:.3f} s, max {p['max']:.3f} s (n={p['n']})"


def lines(r: dict) -> list[str]:
    ph = r["phases"]
    out = [f"Roundhouse GPU check ({r['mode']}), {r['started_utc']}, {r.get('total_s', 0):.0f} s of {r['budget_s']:.0f} s"]
    gpu = ph.get("setup", {}).get("gpu")
    if gpu:
        out.append(f"GPU: {gpu['name']} ({_gib(gpu['total_bytes'])}), driver {gpu['driver_version']} "
                   f"(CUDA {gpu['driver_cuda_version']}), cuda:0 = NVML {gpu['nvml_index']} by {gpu['cuda_to_nvml']}")
        cp = ph["setup"].get("caption_python", {})
        out.append(f"stack: python {cp.get('python')}, torch {cp.get('torch')} (CUDA {cp.get('torch_cuda')}), "
                   f"transformers {cp.get('transformers')}")
    for name, m in ph.get("build", {}).get("models", {}).items():
        out.append(f"model {name}: {m['parameters'] / 1e6:.0f} M parameters, {_gib(m['weights_bytes'])} {m['dtype']}, "
                   f"built in {m['build_s']:.1f} s")
    for name, f in ph.get("footprint", {}).items():
        out.append(f"footprint {name}: measured peak {_gib(f['peak_memory_bytes'])}, NVML peak delta "
                   f"{_gib(f['nvml_peak_delta_bytes'])} (ratio {f['peak_over_nvml_peak']}), on {f['device']}")
    si = ph.get("swap_in")
    if si:
        c, w = si["cold"], si["warm"]
        out.append(f"swap-in cold {c['total_s']:.2f} s = process start {c['process_start_s']:.2f} + imports "
                   f"{c['imports_s']:.2f} + CUDA context {c['cuda_context_s'] or 0:.2f} + weights {c['weights_s']:.2f} "
                   f"+ warm-up {c['warmup_s']:.2f}; warm {w['total_s']:.2f} s (weights {w['weights_s']:.2f}, "
                   f"warm-up {w['warmup_s']:.2f})")
    rel = ph.get("release")
    if rel:
        out.append(f"release over {rel['swaps']} swaps ({rel['unverified']} unverified): gateway {_s(rel['gateway_s'])}; "
                   f"p95 / fixed 3 s sleep = {rel['p95_vs_fixed_sleep']}")
        out.append(f"  seen by NVML from here: {_s(rel['nvml_observed_s'])}")
    tp = ph.get("throughput")
    if tp:
        out.append(f"throughput blip-large: batch 1 {tp['blip-large-b1']['images_per_s']} img/s, max_batch 16 "
                   f"{tp['blip-large']['images_per_s']} img/s (x{tp['batching_gain']})")
    ad = ph.get("admission")
    if ad:
        out.append(f"admission: budget {_gib(ad['budget_bytes'])}, {ad['requests']} mixed requests {ad['statuses']}, "
                   f"{ad['swaps']} swaps, OOM errors {ad['oom_errors']} (service OOM events {ad['service_oom_events']:.0f}), "
                   f"device peak {_gib(ad['device_peak_above_baseline_bytes'])} above baseline, "
                   f"within budget: {ad['within_budget']}")
    oom = ph.get("oom_split")
    if oom:
        out.append(f"OOM split: batch {oom['batch']}, OOM events {oom['service_oom_events']:.0f}, {oom['ok']}/16 ok, "
                   f"split and all succeeded: {oom['split_and_all_succeeded']}")
    rd = ph.get("readiness")
    if rd:
        ff = rd["forced_fallback"]
        out.append(f"readiness: all on cuda:0: {rd['all_on_cuda']}; forced CPU fallback refused: {ff['refused']} "
                   f"({ff['status']} {ff['code']})")
    fc = ph.get("face")
    if fc:
        out.append(f"face-svc: {'ran' if fc['ran'] else 'not run'}: {fc['why']}")
    for name, why in r["skipped"].items():
        out.append(f"SKIPPED {name}: {why}")
    for name, err in r["errors"].items():
        if not name.endswith("_traceback"):
            out.append(f"ERROR {name}: {err}")
    return out


def write_summary(report: dict, path: Path) -> None:
    path.write_text("\n".join(lines(report)) + "\n")
