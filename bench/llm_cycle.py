"""The profile-picture cycle on an 8 GB card: a bot asks the LLM server's vision model about a photo,
then detects the faces in it, then goes back to the LLM for the next photo. The vision model and the
face model do not fit on the card together.

    .venvs/gateway/bin/python bench/llm_cycle.py [--cycles 200] [--seed 7]

Two flows over the same photos, the same model costs and the same release times, on a virtual clock
(nothing sleeps; the run takes well under a second):

- **hand-made**, as the people we build for do it today: a dummy chat request makes llama-swap switch to
  a small model, then a fixed `sleep 3` "for VRAM to free", then the face request; before the next
  vision request the face service is told to unload, and again `sleep 3`. A load that starts while
  memory that is being released is still held runs out of memory: the request fails, the bot sleeps
  3 s and sends it again.
- **roundhouse**: both requests go to the gateway. The real coordinator ``Core`` (the one the gateway
  runs) sequences them: it evicts the LLM tenant through its server's API, waits until the meter
  shows the memory back (polled like ``HttpEffects.unload``: 10 ms, doubling to 200 ms), loads the
  face model, and the other way round for the next photo.

A release takes a random time (seeded; log-normal, the medians below): most take a second or two,
and some, when the card or the driver is busy, longer than the fixed sleep. Prints, per scenario,
the mean and p95 time per cycle and the OOMs of each flow, and one closing line:

    cycle_vs_sleep3=<roundhouse mean / hand-made mean> ooms_roundhouse=<n> ooms_sleep3=<n>

Target: cycle_vs_sleep3 < 1.0 with no OOM for roundhouse in every scenario.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from gateway.coordinator.actions import Fail, Grant, Load, Released, Unload, Wake
from gateway.coordinator.core import Core
from gateway.coordinator.policy import INTERACTIVE, ModelInfo

GiB = 2**30
SLEEP_S = 3.0  # the hand-made flow's fixed wait


@dataclass(frozen=True)
class Card:
    """An RTX 3050 8 GB with a desktop on it; Roundhouse's budget is the total less its reserve."""

    total_bytes: int = 8 * GiB
    desktop_bytes: int = int(0.3 * GiB)
    reserve_bytes: int = int(0.5 * GiB)

    @property
    def room_bytes(self) -> int:
        return self.total_bytes - self.desktop_bytes


@dataclass(frozen=True)
class Model:
    bytes: int
    load_s: float
    run_s: float  # one request


# A 7B vision model at 4 bits with its projector and an 8k context; the face pair (SCRFD + ArcFace on
# ONNX Runtime CUDA, with its context and arena); the small model the hand-made flow switches to.
VISION = Model(int(6.2 * GiB), load_s=3.5, run_s=2.5)
FACE = Model(int(1.6 * GiB), load_s=1.0, run_s=0.08)
SMALL = Model(int(1.0 * GiB), load_s=0.8, run_s=0.3)
FACE_RELEASE_S = 0.3


@dataclass(frozen=True)
class Scenario:
    name: str
    release_median_s: float  # the LLM server's release of the vision model
    sigma: float = 0.45


SCENARIOS = (Scenario("typical release", 1.2), Scenario("busy driver", 2.2), Scenario("slow release", 3.2))


def release_times(scenario: Scenario, n: int, seed: int) -> list[float]:
    rnd = random.Random(f"{seed}:{scenario.name}")
    return [rnd.lognormvariate(0.0, scenario.sigma) * scenario.release_median_s for _ in range(n)]


def verified_after(release_s: float) -> float:
    """When the coordinator's polling sees a release that takes ``release_s``: it reads the meter at
    once, then after 10 ms, doubling up to 200 ms between reads (``HttpEffects.unload``)."""
    t, delay = 0.0, 0.01
    while t < release_s:
        t += delay
        delay = min(delay * 2, 0.2)
    return t


@dataclass
class Run:
    cycles: list[float]
    ooms: int

    def mean(self) -> float:
        return statistics.fmean(self.cycles)

    def p95(self) -> float:
        s = sorted(self.cycles)
        return s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]


def hand_made(card: Card, releases: list[float]) -> Run:
    """The script people write: switch, sleep 3, face; unload face, sleep 3, vision. Memory held by a
    release in progress is freed at its release time; a load that meets it fails (OOM), and the bot
    sleeps 3 s and tries again."""
    now = 0.0
    held: list[tuple[float, int]] = []  # (freed at, bytes) of everything on the card
    ooms = 0
    cycles = []

    def load(model: Model) -> float:
        nonlocal now, ooms
        while True:
            in_use = sum(b for until, b in held if until > now)
            if in_use + model.bytes <= card.room_bytes:
                now += model.load_s
                return now
            ooms += 1
            now += SLEEP_S  # the request failed; the bot waits and sends it again

    for release_s in releases:
        start = now
        vision_until = load(VISION)  # vision request: llama-swap loads the big model
        held.append((float("inf"), VISION.bytes))
        now = vision_until + VISION.run_s
        # the switch: llama-swap stops the big model (its memory comes back after release_s) and loads the small one
        held[-1] = (now + release_s, VISION.bytes)
        load(SMALL)
        small = (float("inf"), SMALL.bytes)
        held.append(small)
        now += SMALL.run_s + SLEEP_S
        load(FACE)  # the face service loads its model
        face = (float("inf"), FACE.bytes)
        held.append(face)
        now += FACE.run_s
        # back to the LLM: unload the face model, sleep, and llama-swap swaps small -> big on the next request
        held[held.index(face)] = (now + FACE_RELEASE_S, FACE.bytes)
        now += SLEEP_S
        held[held.index(small)] = (now, SMALL.bytes)  # llama-swap stops the small model as it starts the big one
        held = [h for h in held if h[0] > now]
        cycles.append(now - start)
    return Run(cycles, ooms)


def roundhouse(card: Card, releases: list[float]) -> Run:
    """The bot sends each request to the gateway and waits for its answer; the real Core decides."""
    infos = {"vision": ModelInfo("vision", VISION.bytes, load_s=VISION.load_s, unload_s=1.2, family="llm"),
             "face": ModelInfo("face", FACE.bytes, load_s=FACE.load_s, unload_s=FACE_RELEASE_S, family="face")}
    models = {"vision": VISION, "face": FACE}
    core = Core("cuda:0", card.total_bytes - card.reserve_bytes, infos)
    heap: list[tuple[float, int, str, str]] = []
    seq = itertools.count()
    held: dict[str, tuple[float, int]] = {}  # model -> (freed at, bytes): what is really on the card
    ooms = 0
    cycles: list[float] = []
    vision_releases = iter(releases)
    req_ids = itertools.count()
    plan = itertools.cycle(["vision", "face"])
    cycle_start = 0.0
    done_cycles = 0

    def push(t: float, kind: str, model: str) -> None:
        heapq.heappush(heap, (t, next(seq), kind, model))

    def apply(actions: list, now: float) -> None:
        nonlocal ooms
        for a in actions:
            if isinstance(a, Grant):
                push(now + models[a.model].run_s, "answered", a.model)
            elif isinstance(a, Load):
                in_use = sum(b for m, (until, b) in held.items() if until > now)
                if in_use + models[a.model].bytes > card.room_bytes:
                    ooms += 1
                held[a.model] = (float("inf"), models[a.model].bytes)
                push(now + models[a.model].load_s, "loaded", a.model)
            elif isinstance(a, Unload):
                release_s = next(vision_releases, 1.2) if a.model == "vision" else FACE_RELEASE_S
                held[a.model] = (now + release_s, models[a.model].bytes)
                push(now + verified_after(release_s), "released", a.model)
            elif isinstance(a, Wake):
                push(a.at, "tick", "")
            elif isinstance(a, Fail):
                raise RuntimeError(f"the coordinator failed a request: {a.kind} {a.message}")

    def send(now: float) -> None:
        apply(core.arrive(next(req_ids), next(plan), now, lane=INTERACTIVE, timeout_s=120.0), now)

    send(0.0)
    while heap and done_cycles < len(releases):
        now, _, kind, model = heapq.heappop(heap)
        if kind == "answered":
            apply(core.release(model, now), now)
            if model == "face":
                cycles.append(now - cycle_start)
                cycle_start = now
                done_cycles += 1
            if done_cycles < len(releases):
                send(now)
        elif kind == "loaded":
            apply(core.load_done(model, now, ok=True, peak_memory_bytes=models[model].bytes,
                                 load_s=models[model].load_s), now)
        elif kind == "released":
            b = models[model].bytes
            apply(core.unload_done(model, now, Released(b, True, 0.0, "meter: back", worker_stopped=True,
                                                        returned_bytes=b)), now)
        elif kind == "tick":
            apply(core.tick(now), now)
        core.check_invariants()
    return Run(cycles, ooms)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    card = Card()
    print(f"card {card.total_bytes / GiB:.0f} GiB, desktop {card.desktop_bytes / GiB:.1f} GiB, budget "
          f"{(card.total_bytes - card.reserve_bytes) / GiB:.1f} GiB; vision {VISION.bytes / GiB:.1f} GiB "
          f"(load {VISION.load_s} s, answer {VISION.run_s} s), face {FACE.bytes / GiB:.1f} GiB (load {FACE.load_s} s, "
          f"answer {FACE.run_s} s), switch model {SMALL.bytes / GiB:.1f} GiB (load {SMALL.load_s} s); "
          f"{args.cycles} cycles, seed {args.seed}\n")
    header = f"{'scenario':16} {'release p50/p95 s':>17} {'flow':10} {'cycle mean s':>12} {'p95 s':>7} {'OOMs':>5}"
    print(header)
    print("-" * len(header))
    ratios, ooms_rh, ooms_hand = [], 0, 0
    for sc in SCENARIOS:
        rel = release_times(sc, args.cycles, args.seed)
        srel = sorted(rel)
        rel_txt = f"{statistics.median(rel):.1f} / {srel[round(0.95 * (len(srel) - 1))]:.1f}"
        hand, rh = hand_made(card, rel), roundhouse(card, rel)
        for name, run in (("sleep-3", hand), ("roundhouse", rh)):
            print(f"{sc.name:16} {rel_txt:>17} {name:10} {run.mean():12.2f} {run.p95():7.2f} {run.ooms:5d}")
        print()
        ratios.append(rh.mean() / hand.mean())
        ooms_rh += rh.ooms
        ooms_hand += hand.ooms
    worst = max(ratios)
    verdict = "ok" if worst < 1.0 and ooms_rh == 0 else "MISS"
    print(f"cycle_vs_sleep3={worst:.2f} ooms_roundhouse={ooms_rh} ooms_sleep3={ooms_hand}  "
          f"(target: < 1.0 and no OOM: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
