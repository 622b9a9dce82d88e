"""Replay request traces through the real coordinator Core under a virtual clock, against two peer
policies, with modelled load (2 s) and unload (0.5 s) times.

    .venvs/gateway/bin/python bench/scheduler.py

Peers, in the same run: FIFO that swaps on every model change (llama-swap's classic policy) and
FIFO with same-model grouping (a swap pulls every queued request for the new model forward).
Four 6 GiB models on a 10 GiB budget, so one fits at a time. Prints a table (swaps per 100
requests, p50 / p99 / max wait, interactive p95) per trace and policy, and one closing line:

    swaps_vs_fifo=<ratio> max_wait_s=<worst> interactive_p95_vs_fifo=<ratio>

Targets: swaps_vs_fifo <= 0.40 on the interleaved and mixed traces; worst wait <= max_wait_s plus
one swap; interactive p95 no worse than FIFO's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from gateway.coordinator import sim  # noqa: E402
from gateway.coordinator.policy import INTERACTIVE, PolicyConfig  # noqa: E402

MAX_WAIT_S = 30.0


def main() -> int:
    models, budget = sim.one_at_a_time()
    one_swap = max(m.load_s for m in models.values()) + max(m.unload_s for m in models.values())
    config = PolicyConfig(max_wait_s=MAX_WAIT_S)
    traces = {
        "interleaved": sim.interleaved(),
        "zipf-poisson": sim.zipf_poisson(),
        "bursts": sim.bursts(),
        "interactive+bulk": sim.interactive_in_bulk(),
    }
    print(f"4 models x 6 GiB on a 10 GiB budget; load {models['A'].load_s:.1f} s, unload {models['A'].unload_s:.1f} s, "
          f"batch {models['A'].batch_s * 1000:.0f} ms (max_batch {models['A'].max_batch}); max_wait_s {MAX_WAIT_S:.0f}\n")
    header = f"{'trace':18} {'policy':14} {'reqs':>5} {'swaps/100':>9} {'p50 s':>8} {'p99 s':>8} {'max s':>8} {'inter p95':>9} {'failed':>6}"
    print(header)
    print("-" * len(header))
    results: dict[str, dict[str, sim.SimResult]] = {}
    t0 = time.perf_counter()
    for name, trace in traces.items():
        results[name] = {
            "roundhouse": sim.simulate_core(trace, models, budget, config),
            "fifo": sim.simulate_fifo(trace, models, budget),
            "fifo+grouping": sim.simulate_fifo(trace, models, budget, group_same_model=True),
        }
        for policy, res in results[name].items():
            s = res.summary()
            inter = f"{s['interactive_p95']:9.2f}" if res.waits(INTERACTIVE) else f"{'-':>9}"
            print(f"{name:18} {policy:14} {s['requests']:5d} {s['swaps_per_100']:9.1f} {s['p50']:8.2f} {s['p99']:8.2f} "
                  f"{s['max']:8.2f} {inter} {s['failed']:6d}")
        print()
    elapsed = time.perf_counter() - t0

    ratios = {n: results[n]["roundhouse"].swaps / max(1, results[n]["fifo"].swaps) for n in ("interleaved", "zipf-poisson")}
    swaps_vs_fifo = max(ratios.values())
    worst = max(max(r["roundhouse"].waits(), default=0.0) for r in results.values())
    mixed = results["interactive+bulk"]
    inter_ratio = mixed["roundhouse"].pct(95, INTERACTIVE) / max(1e-9, mixed["fifo"].pct(95, INTERACTIVE))
    bound = MAX_WAIT_S + one_swap
    print(f"swap ratios vs FIFO: " + ", ".join(f"{n} {r:.2f}" for n, r in ratios.items()) +
          f"; worst wait {worst:.2f} s (bound {bound:.1f} s); replay took {elapsed:.1f} s of real time")
    verdict = lambda ok: "PASS" if ok else "MISS"  # noqa: E731
    print(f"targets: swaps_vs_fifo<=0.40 {verdict(swaps_vs_fifo <= 0.40)}, max_wait<={bound:.1f}s {verdict(worst <= bound)}, "
          f"interactive_p95_vs_fifo<=1.0 {verdict(inter_ratio <= 1.0)}")
    print(f"swaps_vs_fifo={swaps_vs_fifo:.2f} max_wait_s={worst:.2f} interactive_p95_vs_fifo={inter_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
