"""Replay request traces through the real coordinator Core under a virtual clock, against two peer
policies, with swap costs taken from measurements.

    .venvs/gateway/bin/python bench/scheduler.py

Peers, in the same run, on the same traces, batchers and swap costs: FIFO that swaps on every
model change, and llama-swap's router (``coordinator/peers.py``: a transcription of its FIFO
scheduler, which serves a loaded model's requests at once and lets one swap serve every request
queued for its model: "grouping"). Four 6 GiB models on a 10 GiB budget, so one fits at a time.

Swap costs, one table per profile:

- modelled: every load 2.0 s, every unload 0.5 s (the figures this bench used before measuring);
- cold workers: A and B are caption models, C and D speech models. Unloading a family's last model
  ends its worker (0.4 s: 0.3-0.5 s measured); the next load starts a new one: 6.84 s for a caption
  model, 3.28 s for whisper (measured on main 441b98e, make dev, CPU);
- warm spares: the same, but each family keeps a warm spare worker (modelhost's spare_worker, on by
  default): a load into it takes 0.24 s (measured: a caption load into a live worker; taken for
  whisper too), and the next spare is ready only after its imports (6.6 s caption, 3.04 s whisper),
  so a family swapped in again sooner waits for them.

Prints a table per profile (swaps per 100 requests, p50 / p99 / max wait, interactive p95), the
trade-off curve (swaps and worst wait against llama-swap's as bulk patience varies), and one closing
line, each figure the worst over the profiles and the interleaved and Zipf-Poisson traces:

    swaps_vs_fifo=<r> swaps_vs_grouping=<r> max_wait_vs_grouping=<r> max_wait_s=<s> interactive_p95_vs_fifo=<r>

Targets: swaps_vs_fifo <= 0.40; swaps_vs_grouping <= 0.6 at max_wait_vs_grouping <= 1.0 (the
curve shows where the default sits when both cannot hold); worst wait <= max_wait_s plus one swap;
interactive p95 no worse than FIFO's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from gateway.coordinator import sim  # noqa: E402
from gateway.coordinator.policy import INTERACTIVE, PolicyConfig  # noqa: E402
from gateway.coordinator.sim import WorkerCosts  # noqa: E402

MAX_WAIT_S = 30.0
FAMILY = {"A": "caption", "B": "caption", "C": "asr", "D": "asr"}
STOP_S = 0.4
PROFILES: dict[str, dict[str, WorkerCosts] | None] = {
    "modelled": None,
    "cold workers": {"caption": WorkerCosts(6.84, 0.24, STOP_S), "asr": WorkerCosts(3.28, 0.24, STOP_S)},
    "warm spares": {"caption": WorkerCosts(6.84, 0.24, STOP_S, spare=True), "asr": WorkerCosts(3.28, 0.24, STOP_S, spare=True)},
}
HEADLINE = ("interleaved", "zipf-poisson")
CURVE_PATIENCE_S = (0.0, 2.5, 5.0, 7.5, 10.0, 15.0)


def one_swap_s(models: dict[str, sim.SimModel], workers: dict[str, WorkerCosts] | None) -> float:
    if workers is None:
        return max(m.load_s for m in models.values()) + max(m.unload_s for m in models.values())
    return max(c.cold_load_s + c.stop_s for c in workers.values())


def run_profile(name: str, workers: dict[str, WorkerCosts] | None, traces: dict, config: PolicyConfig) -> dict:
    models, budget = sim.one_at_a_time()
    for m, spec in models.items():
        spec.family = FAMILY[m]
    header = f"{'trace':18} {'policy':12} {'reqs':>5} {'swaps/100':>9} {'p50 s':>8} {'p99 s':>8} {'max s':>8} {'inter p95':>9} {'failed':>6}"
    print(f"[{name}]")
    print(header)
    print("-" * len(header))
    results: dict[str, dict[str, sim.SimResult]] = {}
    for trace_name, trace in traces.items():
        results[trace_name] = {
            "roundhouse": sim.simulate_core(trace, models, budget, config, workers=workers),
            "fifo": sim.simulate_fifo(trace, models, budget, workers=workers),
            "llama-swap": sim.simulate_fifo(trace, models, budget, group_same_model=True, workers=workers),
        }
        for policy, res in results[trace_name].items():
            s = res.summary()
            inter = f"{s['interactive_p95']:9.2f}" if res.waits(INTERACTIVE) else f"{'-':>9}"
            print(f"{trace_name:18} {policy:12} {s['requests']:5d} {s['swaps_per_100']:9.1f} {s['p50']:8.2f} {s['p99']:8.2f} "
                  f"{s['max']:8.2f} {inter} {s['failed']:6d}")
    vs = {t: ratios(results[t]) for t in HEADLINE}
    print("vs llama-swap: " + ", ".join(f"{t} swaps {r['grouping']:.2f}x, worst wait {r['wait']:.2f}x" for t, r in vs.items()))
    span = {t: traces[t][-1].at for t in HEADLINE}
    print("device time spent swapping over the trace: " + ", ".join(
        f"{t} roundhouse {results[t]['roundhouse'].swap_s / span[t]:.0%}, llama-swap {results[t]['llama-swap'].swap_s / span[t]:.0%}"
        for t in HEADLINE))
    mixed = results["interactive+bulk"]
    print()
    return {"vs": vs, "worst": max(max(r["roundhouse"].waits(), default=0.0) for r in results.values()),
            "bound": MAX_WAIT_S + one_swap_s(models, workers),
            "inter": mixed["roundhouse"].pct(95, INTERACTIVE) / max(1e-9, mixed["fifo"].pct(95, INTERACTIVE))}


def ratios(res: dict[str, sim.SimResult]) -> dict[str, float]:
    ours, peer = res["roundhouse"], res["llama-swap"]
    return {"fifo": ours.swaps / max(1, res["fifo"].swaps), "grouping": ours.swaps / max(1, peer.swaps),
            "wait": max(ours.waits(), default=0.0) / max(1e-9, max(peer.waits(), default=0.0))}


def curve(traces: dict, default_s: float) -> None:
    """Swaps and worst wait against llama-swap's as bulk patience varies, per profile and trace."""
    print(f"trade-off: roundhouse vs llama-swap as bulk_patience_s varies (swaps x / worst wait x); default {default_s:g} s")
    print(f"{'profile':14} {'trace':14} " + " ".join(f"{p:>12g}" for p in CURVE_PATIENCE_S))
    for name, workers in PROFILES.items():
        models, budget = sim.one_at_a_time()
        for m, spec in models.items():
            spec.family = FAMILY[m]
        for trace_name in HEADLINE:
            trace = traces[trace_name]
            peer = sim.simulate_fifo(trace, models, budget, group_same_model=True, workers=workers)
            cells = []
            for p in CURVE_PATIENCE_S:
                ours = sim.simulate_core(trace, models, budget, PolicyConfig(max_wait_s=MAX_WAIT_S, bulk_patience_s=p),
                                         check=False, workers=workers)
                r = ratios({"roundhouse": ours, "llama-swap": peer, "fifo": peer})
                cells.append(f"{r['grouping']:.2f}/{r['wait']:.2f}")
            print(f"{name:14} {trace_name:14} " + " ".join(f"{c:>12}" for c in cells))
    print()


def main() -> int:
    config = PolicyConfig(max_wait_s=MAX_WAIT_S)
    traces = {
        "interleaved": sim.interleaved(),
        "zipf-poisson": sim.zipf_poisson(),
        "bursts": sim.bursts(),
        "interactive+bulk": sim.interactive_in_bulk(),
    }
    print(f"4 models x 6 GiB on a 10 GiB budget, batch 50 ms (max_batch 8); max_wait_s {MAX_WAIT_S:.0f}, "
          f"bulk_patience_s {config.bulk_patience_s:g}; A, B caption, C, D speech\n")
    t0 = time.perf_counter()
    out = {name: run_profile(name, workers, traces, config) for name, workers in PROFILES.items()}
    curve(traces, config.bulk_patience_s)
    elapsed = time.perf_counter() - t0

    every = [r for o in out.values() for r in o["vs"].values()]
    swaps_vs_fifo = max(r["fifo"] for r in every)
    swaps_vs_grouping = max(r["grouping"] for r in every)
    wait_vs_grouping = max(r["wait"] for r in every)
    worst = max(o["worst"] for o in out.values())
    within_bound = all(o["worst"] <= o["bound"] for o in out.values())
    inter_ratio = max(o["inter"] for o in out.values())
    print(f"worst wait {worst:.2f} s (bound max_wait_s + one swap: " +
          ", ".join(f"{n} {o['bound']:.1f} s" for n, o in out.items()) + f"); replay took {elapsed:.1f} s of real time")
    verdict = lambda ok: "PASS" if ok else "MISS"  # noqa: E731
    print(f"targets: swaps_vs_fifo<=0.40 {verdict(swaps_vs_fifo <= 0.40)}, swaps_vs_grouping<=0.60 "
          f"{verdict(swaps_vs_grouping <= 0.60)}, max_wait_vs_grouping<=1.0 {verdict(wait_vs_grouping <= 1.0)}, "
          f"max_wait within bound {verdict(within_bound)}, interactive_p95_vs_fifo<=1.0 {verdict(inter_ratio <= 1.0)}")
    print(f"swaps_vs_fifo={swaps_vs_fifo:.2f} swaps_vs_grouping={swaps_vs_grouping:.2f} max_wait_vs_grouping={wait_vs_grouping:.2f} "
          f"max_wait_s={worst:.2f} interactive_p95_vs_fifo={inter_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
