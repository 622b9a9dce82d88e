"""Swap-in time per family: a load into a cold worker, into a warm spare, into a live worker, an un-park of a
parked model, and an A->B->A cycle between two families, in one run.

    .venvs/gateway/bin/python bench/swap.py [--repeats 5] [--cycles 2] [--dwell-s 8]

Needs ``.venvs/caption-svc``, ``.venvs/asr-svc`` and the tiny models (``make tiny-models``:
``build/tiny-models/catalog.yaml``). Each family's service (caption-svc: ``tiny-blip``; asr-svc:
``tiny-whisper``) is started on loopback with that catalog, and every load is ``POST /v1/models/{id}/load`` on
the service itself, timed by this client from the request to the answer (the model READY: weights loaded and
one warm-up inference passed):

* cold: the service with its spare turned off (``*_SVC_SPARE_WORKER=false``) and no model resident: the
  load starts a worker process, which imports the family's frameworks, then loads (main before the spare);
* spare: the service as shipped, no model resident, its warm spare ready (``GET /v1/models``: ``spare.state``):
  the load takes the spare;
* live: another model of the family (``tiny-blip2``, ``tiny-faster-whisper``) keeps the worker alive; the
  load goes into that worker, as a load always did when a family already had a model resident;
* parked: a third service with ``*_SVC_PARK=true``: the model is parked (``POST /v1/models/{id}/park``: its
  weights to host memory in the live worker) and loaded again, which un-parks it; beside it, the same model's
  load into that live worker after a full unload (``live (same)``). The model that parks: ``tiny-blip`` (torch);
  for speech ``tiny-faster-whisper`` (CTranslate2; openai-whisper's backend does not park). On a CPU there is no
  device to copy to, so the un-park is the warm-up alone: the GPU proof measures the copy.

Each load is followed by its unload (the last model's unload ends the worker); ``--repeats`` loads per row,
median. The two services of a family run side by side (spare off: cold, then live; spare on), each measured
load starts with the spare ready, and spare and live loads alternate. The cycle: both services up, ``tiny-blip`` loaded; then ``--cycles`` times: unload it and load
``tiny-whisper``, wait ``--dwell-s`` (the model serving), unload it and load ``tiny-blip``, wait: what a
one-GPU box does when two families take turns, each swap = one unload + one load. Once with spares, once
without. Ratios: spare and cold against live, per family, and the cycle's mean swap with spares against
without. The done-when figure is ``spare_vs_live`` (the worst family; target <= 1.3).

Figures are printed, never asserted; the exit status is non-zero only when the run itself failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import CAPTION_PY, ROOT, Processes, free_port, http_call, machine, wait_ready  # noqa: E402

ASR_PY = ROOT / ".venvs" / "asr-svc" / "bin" / "python"
CATALOG = ROOT / "build" / "tiny-models" / "catalog.yaml"
TARGET = 1.3


@dataclass(frozen=True)
class Fam:
    name: str
    python: Path
    module: str
    prefix: str  # its settings' env prefix
    model: str  # the model whose swap-in is measured
    companion: str  # keeps the worker alive for the "live" row
    parks: str  # the model of the "parked" row (its backend can park)
    parks_companion: str  # keeps that service's worker alive meanwhile


FAMILIES = (
    Fam("caption", CAPTION_PY, "caption_svc", "CAPTION_SVC", "tiny-blip", "tiny-blip2", "tiny-blip", "tiny-blip2"),
    Fam("asr", ASR_PY, "asr_svc", "ASR_SVC", "tiny-whisper", "tiny-faster-whisper", "tiny-faster-whisper", "tiny-whisper"),
)


FAM_BY_NAME = {f.name: f for f in FAMILIES}


class Service:
    def __init__(self, procs: Processes, fam: Fam, *, spare: bool, park: bool = False) -> None:
        self.fam, self.port = fam, free_port()
        self.name = f"{fam.name}-svc-{'spare' if spare else 'nospare'}{'-park' if park else ''}"
        self._procs = procs
        procs.start(self.name, [fam.python, "-m", fam.module], env={
            f"{fam.prefix}_CATALOG": str(CATALOG), f"{fam.prefix}_PORT": str(self.port),
            f"{fam.prefix}_LOG_LEVEL": "WARNING", f"{fam.prefix}_SPARE_WORKER": "true" if spare else "false",
            f"{fam.prefix}_PARK": "true" if park else "false",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})

    def ready(self) -> "Service":
        wait_ready(self._procs, self.name, self.port, "/health/ready", deadline_s=120)
        return self

    def _post(self, path: str) -> dict:
        status, body = http_call(self.port, "POST", path, timeout_s=600)
        if status != 200:
            raise RuntimeError(f"{self.name} {path} answered {status}: {body[:300]!r}\n{self._procs.log_tail(self.name)}")
        return json.loads(body)

    def load(self, model: str) -> float:
        """Seconds from the request to READY."""
        t0 = time.perf_counter()
        self._post(f"/v1/models/{model}/load")
        return time.perf_counter() - t0

    def unload(self, model: str) -> float:
        t0 = time.perf_counter()
        self._post(f"/v1/models/{model}/unload")
        return time.perf_counter() - t0

    def park(self, model: str) -> dict:
        reply = self._post(f"/v1/models/{model}/park")
        if not reply["parked"]:
            raise RuntimeError(f"{self.name}: {model} was not parked: {reply.get('reason')}")
        return reply

    def listing(self) -> dict:
        status, body = http_call(self.port, "GET", "/v1/models")
        if status != 200:
            raise RuntimeError(f"{self.name} GET /v1/models answered {status}")
        return json.loads(body)

    def wait_spare(self, deadline_s: float = 180.0) -> dict:
        """Wait until the spare is ready; returns its row."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            self._procs.check_alive()
            spare = self.listing().get("spare") or {}
            if spare.get("state") == "ready":
                return spare
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no spare ready within {deadline_s:.0f} s\n{self._procs.log_tail(self.name)}")


def measure_family(procs: Processes, fam: Fam, repeats: int) -> dict:
    """Two services of the family side by side, spare off and on. Every measured load starts with the spare
    ready (a spare that is still importing would take the CPU from the load measured), and the spare and
    live loads alternate, so that a slow spell of the shared CPUs falls on both."""
    row: dict = {"family": fam.name, "model": fam.model, "cold": [], "live": [], "spare": []}
    plain, warm = Service(procs, fam, spare=False), Service(procs, fam, spare=True)
    plain.ready(), warm.ready()
    warm.wait_spare()
    for _ in range(repeats):
        row["cold"].append(_load_unload(plain, fam.model))
    plain.load(fam.companion)  # from now on this worker stays alive
    _load_unload(plain, fam.model)  # the first load into it imports the model's own modules: not counted
    spares = []
    for _ in range(repeats):
        spares.append(warm.wait_spare())
        row["live"].append(_load_unload(plain, fam.model))
        row["spare"].append(_load_unload(warm, fam.model))
    row["spare_rss_bytes"] = statistics.median(s["host_memory_bytes"] for s in spares)
    row["spare_preload_s"] = statistics.median(s["preload_s"] for s in spares)
    procs.stop(plain.name), procs.stop(warm.name)
    return row


def measure_parked(procs: Processes, fam: Fam, repeats: int) -> dict:
    """A service with parking on, its worker kept alive by a companion: the model's un-park (park, then load)
    against its load into that same live worker after a full unload, alternating."""
    svc = Service(procs, fam, spare=False, park=True).ready()
    svc.load(fam.parks_companion)
    _load_unload(svc, fam.parks)  # the first load into it imports the model's own modules: not counted
    row: dict = {"parked": [], "live_same": [], "host_bytes": []}
    for _ in range(repeats):
        row["live_same"].append(_load_unload(svc, fam.parks))
        svc.load(fam.parks)
        row["host_bytes"].append(svc.park(fam.parks)["host_memory_bytes"])
        row["parked"].append(svc.load(fam.parks))
        svc.unload(fam.parks)
    procs.stop(svc.name)
    return row


def _load_unload(svc: Service, model: str) -> float:
    t = svc.load(model)
    svc.unload(model)
    return t


def measure_cycle(procs: Processes, cycles: int, dwell_s: float, *, spare: bool) -> dict:
    a_fam, b_fam = FAMILIES
    a, b = Service(procs, a_fam, spare=spare), Service(procs, b_fam, spare=spare)
    a.ready(), b.ready()
    if spare:  # both families as a box that has run a while finds them
        a.wait_spare(), b.wait_spare()
    loads: list[float] = []
    swaps: list[float] = []
    a.load(a_fam.model)
    time.sleep(dwell_s)
    for _ in range(cycles):
        for (off, off_model), (on, on_model) in (((a, a_fam.model), (b, b_fam.model)),
                                                 ((b, b_fam.model), (a, a_fam.model))):
            out = off.unload(off_model)
            t = on.load(on_model)
            loads.append(t)
            swaps.append(out + t)
            time.sleep(dwell_s)
    procs.stop(a.name), procs.stop(b.name)
    return {"spare": spare, "loads": loads, "swaps": swaps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="loads per row, median (default: %(default)s)")
    parser.add_argument("--cycles", type=int, default=2, help="A->B->A cycles per setting (default: %(default)s)")
    parser.add_argument("--dwell-s", type=float, default=8.0,
                        help="seconds a model serves between two swaps of the cycle (default: %(default)s)")
    parser.add_argument("--families", default=",".join(f.name for f in FAMILIES),
                        help="families to measure, comma-separated (default: %(default)s); the cycle needs both")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with every log")
    args = parser.parse_args(argv)
    if not CATALOG.exists():
        print(f"ERROR: {CATALOG} does not exist; run `make tiny-models`", file=sys.stderr)
        return 2
    started = time.monotonic()
    print(f"swap benchmark, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {machine()}")
    print(f"load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          "(other work on the machine skews every figure)")
    tmp = Path(tempfile.mkdtemp(prefix="rh-bench-swap-"))
    try:
        with Processes(tmp) as procs:
            rows = []
            for fam in (f for f in FAMILIES if f.name in args.families.split(",")):
                rows.append(measure_family(procs, fam, args.repeats))
                rows[-1].update(measure_parked(procs, fam, args.repeats))
                print(f"  {fam.name}: done", flush=True)
            cycles = [measure_cycle(procs, args.cycles, args.dwell_s, spare=s) for s in (True, False)] if args.cycles else []
            print("  cycle: done", flush=True)
    finally:
        if args.keep_logs:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median
    print()
    print("| family | model | cold worker s | spare s | live worker s | cold / live | spare / live | spare RSS MiB |"
          " spare imports s | parked model | parked s | live (same) s | parked / live | parked / cold | parked host MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    ratios, parked_ratios = {}, {}
    for r in rows:
        cold, spare, live = med(r["cold"]), med(r["spare"]), med(r["live"])
        ratios[r["family"]] = spare / live
        parked, live_same = med(r["parked"]), med(r["live_same"])
        parked_ratios[r["family"]] = parked / live_same
        print(f"| {r['family']} | {r['model']} | {cold:.2f} | {spare:.2f} | {live:.2f} | {cold / live:.1f} | "
              f"{spare / live:.2f} | {r['spare_rss_bytes'] / 2**20:.0f} | {r['spare_preload_s']:.2f} | "
              f"{FAM_BY_NAME[r['family']].parks} | {parked:.2f} | {live_same:.2f} | {parked / live_same:.2f} | "
              f"{parked / cold:.2f} | {med(r['host_bytes']) / 2**20:.1f} |")
    print()
    print(f"A->B->A ({FAMILIES[0].model} <-> {FAMILIES[1].model}, {args.cycles} cycle(s), {args.dwell_s:.0f} s dwell):")
    for c in cycles:
        print(f"  {'spares' if c['spare'] else 'no spares':<10} swap (unload + load) mean {statistics.mean(c['swaps']):.2f} s,"
              f" loads {' '.join(f'{x:.2f}' for x in c['loads'])}")
    print(f"whole run {time.monotonic() - started:.0f} s")
    worst = max(ratios.values())
    per_family = " ".join(f"{f}_spare_vs_live={x:.2f}" for f, x in ratios.items())
    cold_live = " ".join(f"{r['family']}_cold_vs_live={med(r['cold']) / med(r['live']):.1f}" for r in rows)
    cycle_ratio = statistics.mean(cycles[0]["swaps"]) / statistics.mean(cycles[1]["swaps"]) if cycles else float("nan")
    parked_live = " ".join(f"{f}_parked_vs_live={x:.2f}" for f, x in parked_ratios.items())
    print(f"spare_vs_live={worst:.2f} (target <= {TARGET}) {'PASS' if worst <= TARGET else 'MISS'} {per_family} "
          f"{cold_live} {parked_live} cycle_spare_vs_cold={cycle_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
