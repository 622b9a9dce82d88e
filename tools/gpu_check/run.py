"""``make gpu-check``: prove Roundhouse's VRAM claims on a real NVIDIA GPU in one run; ``--rehearsal``
runs the same script on a CPU against the fake NVML, so it cannot rot while no GPU is lent.

    python tools/gpu_check/run.py --out OUT_DIR [--rehearsal] [--budget-s 420] [--swaps 50]

Builds BLIP-large-, BLIP-2- and Qwen2.5-VL-sized caption models with random weights on the spot
(``build_models.py``), starts caption-svc and the gateway on cuda:0, and measures through NVML:
footprints (the service's measured peak against NVML's delta), a cold and a warm swap-in split into
its parts, verified release over N swaps (p50/p95/max against the seeds' fixed 3 s sleep),
throughput at batch 1 against max_batch, admission under a budget that fits one model at a time
(a mixed trace: zero OOMs, the device never past the budget), the OOM split of a batch too big for
what is left of the card, and honest readiness (cuda asked, cuda got; a forced CPU fallback refused).
Writes OUT_DIR/report.json (fields: README, "GPU check"), OUT_DIR/summary.txt and OUT_DIR/logs/.
Every phase is timed and bounded by ``--budget-s``; a phase that fails or has no time left is
recorded as such, and the report is written regardless.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "modelhost")]

import phases  # noqa: E402
import stack  # noqa: E402
from summary import write_summary  # noqa: E402

MiB = 2**20


class Check:
    """The run's state: where things are, the stack's processes, the report being filled, the clock."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rehearsal = args.rehearsal
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.out = Path(args.out).resolve()
        self.logs = self.out / "logs"
        self.work = Path(args.work or tempfile.mkdtemp(prefix="roundhouse-gpu-check-")).resolve()
        self.python = args.python or sys.executable
        self.caption_python = args.caption_python or self.python
        self.env_extra: dict[str, str] = {}
        self.gpu: stack.Gpu | None = None
        self.baseline_used = 0
        self.caption: stack.Proc | None = None
        self.gateway: stack.Proc | None = None
        self.procs: list[stack.Proc] = []
        self.models: dict[str, Any] = {}  # what build_models built
        self.footprints: dict[str, dict] = {}
        self.report: dict[str, Any] = {
            "schema": 1, "mode": "rehearsal" if self.rehearsal else "gpu",
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "budget_s": args.budget_s,
            "phases": {}, "phase_seconds": {}, "skipped": {}, "errors": {},
        }

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def env(self, **extra: str) -> dict[str, str]:
        return stack.stack_env({**self.env_extra, **extra})

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()


async def run_phase(check: Check, name: str, needs_s: float, fn: Any) -> None:
    """Run one phase if ``needs_s`` seconds are left; record its result, its time, or why not."""
    if check.left() < needs_s:
        check.report["skipped"][name] = f"{check.left():.0f} s left of the budget, the phase needs about {needs_s:.0f} s"
        print(f"--- {name}: skipped ({check.report['skipped'][name]})", flush=True)
        return
    print(f"--- {name} ({check.left():.0f} s left)", flush=True)
    t = time.monotonic()
    try:
        result = fn(check)
        if asyncio.iscoroutine(result):
            result = await result
        if result is not None:
            check.report["phases"][name] = result
    except Exception as e:  # one phase failing must not lose the others' figures
        check.report["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
        check.report["errors"][f"{name}_traceback"] = traceback.format_exc()[-3000:]
        print(f"--- {name} FAILED: {type(e).__name__}: {e}", flush=True)
    finally:
        check.report["phase_seconds"][name] = round(time.monotonic() - t, 2)


def setup(check: Check) -> dict:
    """The fake NVML (rehearsal), the GPU as NVML sees it, the environment's versions."""
    check.logs.mkdir(parents=True, exist_ok=True)
    if check.rehearsal:
        sys.path.insert(0, str(ROOT))
        from tests.doubles.fake_nvml_host import write_spec

        check.env_extra = write_spec(check.work / "fake-nvml.json")
        # The fake counts every worker process's resident set as device memory, a warm spare's too (torch
        # imported: hundreds of MB), which on a GPU holds none: the rehearsal runs without spares.
        check.env_extra["CAPTION_SVC_SPARE_WORKER"] = "false"
        os.environ.update(check.env_extra)
        sys.path.insert(0, check.env_extra["PYTHONPATH"].split(os.pathsep)[0])  # this process's pynvml too
    check.gpu = stack.Gpu(0)
    check.baseline_used = check.gpu.used()
    probe = subprocess.run([check.caption_python, "-c", phases.VERSIONS_PROBE], capture_output=True, text=True,
                           env=check.env(), timeout=120)
    versions = json.loads(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0 else {"error": probe.stderr[-800:]}
    return {"gpu": check.gpu.describe(), "baseline_used_bytes": check.baseline_used, "caption_python": versions,
            "python": sys.version.split()[0], "host": os.uname().nodename}


def build(check: Check) -> dict:
    models_dir = Path(check.args.models_dir) if check.args.models_dir else phases.default_models_dir(check)
    argv = [check.caption_python, str(HERE / "build_models.py"), str(models_dir),
            "--scale", "mini" if check.rehearsal else "real", "--device", "cpu" if check.rehearsal else "cuda",
            "--qwen", check.args.qwen]
    with open(check.logs / "build.log", "ab") as log:
        subprocess.run(argv, env=check.env(), stdout=log, stderr=subprocess.STDOUT, check=True, timeout=max(60, check.left()))
    check.models = json.loads((models_dir / "models.json").read_text())
    return {"models_dir": str(models_dir), "models": check.models}


def start_stack(check: Check) -> dict:
    catalog = phases.write_catalog(check, check.work / "catalog.yaml")
    t = time.monotonic()
    check.caption = stack.start_caption_svc(check.caption_python, catalog, check.logs, check.env())
    check.procs.append(check.caption)
    check.gateway = stack.start_gateway(check.python, catalog, check.caption.url, check.logs, check.env(),
                                        check.work / "gateway-data", release_timeout_s=str(check.args.release_timeout_s))
    check.procs.append(check.gateway)
    return {"start_s": round(time.monotonic() - t, 2), "catalog": catalog.read_text()}


async def main_async(args: argparse.Namespace) -> int:
    check = Check(args)
    check.out.mkdir(parents=True, exist_ok=True)
    try:
        await run_phase(check, "setup", 0, setup)
        if check.gpu is not None:
            await run_phase(check, "build", 30, build)
        if check.models:
            await run_phase(check, "start", 20, start_stack)
        if check.gateway is not None:
            await run_phase(check, "footprint", 30, phases.footprints)
            await run_phase(check, "swap_in", 30, phases.swap_in)
            await run_phase(check, "release", 20, phases.release)
            await run_phase(check, "throughput", 25, phases.throughput)
            await run_phase(check, "admission", 40, phases.admission)
            await run_phase(check, "oom_split", 20, phases.oom_split)
            await run_phase(check, "readiness", 20, phases.readiness)
        await run_phase(check, "face", 0, phases.face)
    finally:
        check.stop_all()
        check.report["total_s"] = round(time.monotonic() - check.t0, 2)
        (check.out / "report.json").write_text(json.dumps(check.report, indent=1, default=str))
        write_summary(check.report, check.out / "summary.txt")
        if not args.keep_work and args.work is None:
            shutil.rmtree(check.work, ignore_errors=True)
    print((check.out / "summary.txt").read_text(), flush=True)
    return 1 if check.report["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for report.json, summary.txt and logs/")
    p.add_argument("--rehearsal", action="store_true", help="on a CPU against the fake NVML, with tiny-width models")
    p.add_argument("--budget-s", type=float, default=420.0, help="the whole run, set-up included (default %(default)s)")
    p.add_argument("--swaps", type=int, default=50, help="unload/load cycles timed for the release figures")
    p.add_argument("--python", help="interpreter of the gateway (default: this one)")
    p.add_argument("--caption-python", help="interpreter of caption-svc and the model builder (default: --python)")
    p.add_argument("--models-dir", help="where the models are built (default: /dev/shm when it has room, else a temp dir)")
    p.add_argument("--qwen", choices=["3b", "7b"], default="3b", help="the Qwen2.5-VL size to build")
    p.add_argument("--release-timeout-s", type=float, default=15.0, help="GATEWAY_RELEASE_TIMEOUT_S of the stack")
    p.add_argument("--work", help="work folder (default: a temp dir, removed at the end)")
    p.add_argument("--keep-work", action="store_true")
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
