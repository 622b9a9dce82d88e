"""The GPU check (``tools/gpu_check``) rehearsed on the CPU, so it cannot rot while no GPU is lent.

The real script runs: it builds the caption models (at tiny widths), starts caption-svc and the gateway
as processes, and takes every measurement through their HTTP APIs and NVML. NVML is the one thing
faked: every process of the run finds the host-backed fake first on its PYTHONPATH (two GPUs in the
seeds' order, the models' workers on the card CUDA calls cuda:0), so the meters, the budgets and the
release checks of the real stack run against it. Then the report's shape, and the README's
documentation of every field, are checked.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests import procs

pytestmark = pytest.mark.proc

PHASES = ("setup", "build", "start", "footprint", "swap_in", "release", "throughput", "admission", "oom_split",
          "readiness", "face")


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, str]:
    out = tmp_path_factory.mktemp("gpu-check")
    # A budget far above what the rehearsal needs (100-150 s here): the budget exists to fit a GPU lease, and
    # a shared CI machine's slow minute must not skip a phase (170 s once left admission out under load).
    run = subprocess.run(
        [str(procs.GATEWAY_PY), "tools/gpu_check/run.py", "--rehearsal", "--out", str(out), "--budget-s", "600",
         "--swaps", "8", "--release-timeout-s", "5", "--caption-python", str(procs.CAPTION_PY)],
        cwd=procs.ROOT, capture_output=True, text=True, timeout=900)
    assert (out / "report.json").exists(), run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), (out / "summary.txt").read_text(), run.stdout + run.stderr


def test_every_phase_ran_without_an_error(rehearsal: tuple[dict, str, str]) -> None:
    report, _, log = rehearsal
    assert report["errors"] == {}, log[-4000:]
    assert report["skipped"] == {}
    assert set(PHASES) <= set(report["phases"]) and report["mode"] == "rehearsal"
    assert report["total_s"] <= report["budget_s"]


def test_the_meters_watched_the_card_cuda_calls_0(rehearsal: tuple[dict, str, str]) -> None:
    report, _, _ = rehearsal
    gpu = report["phases"]["setup"]["gpu"]
    assert (gpu["nvml_index"], gpu["cuda_to_nvml"]) == (1, "guess")  # the "RTX 3090", NVML's second
    # Measured on the card the worker really grew on: on the other one every footprint would be 0 ...
    for name, f in report["phases"]["footprint"].items():
        assert f["peak_memory_bytes"] > 0 and f["nvml_peak_delta_bytes"] > 0, name
    # ... and no release would ever show as verified.
    release = report["phases"]["release"]
    assert release["swaps"] == 8 and release["unverified"] <= release["swaps"] // 2
    assert release["gateway_s"]["p95"] is not None and release["p95_vs_fixed_sleep"] is not None


def test_the_measurements_came_through_the_stack(rehearsal: tuple[dict, str, str]) -> None:
    ph = rehearsal[0]["phases"]
    assert ph["swap_in"]["cold"]["total_s"] > ph["swap_in"]["warm"]["total_s"]
    assert ph["throughput"]["blip-large"]["ok"] == ph["throughput"]["blip-large"]["images"]
    assert ph["admission"]["oom_errors"] == 0 and ph["admission"]["swaps"] >= 3
    assert sum(ph["admission"]["statuses"].values()) == ph["admission"]["requests"]
    assert ph["oom_split"]["ok"] == 16
    assert ph["readiness"]["forced_fallback"]["refused"], ph["readiness"]
    assert not ph["face"]["ran"]


def test_the_summary_says_what_the_report_holds(rehearsal: tuple[dict, str, str]) -> None:
    summary = rehearsal[1]
    for part in ("GPU check (rehearsal)", "footprint blip2", "swap-in cold", "release over 8 swaps",
                 "throughput blip-large", "admission: budget", "OOM split", "readiness", "face-svc"):
        assert part in summary


def test_the_readme_documents_every_field_of_the_report(rehearsal: tuple[dict, str, str]) -> None:
    report = rehearsal[0]
    readme = (procs.ROOT / "README.md").read_text()
    section = readme[readme.index("## GPU check"):]
    section = section[:section.find("\n## ", 5)] if "\n## " in section[5:] else section
    documented = set(re.findall(r"`([a-z_0-9.-]+)`", section))
    keys = set(report) | set(report["phases"])
    for phase in PHASES:
        keys |= {k for k in report["phases"][phase] if phase not in ("build", "footprint")}
    keys |= set(next(iter(report["phases"]["footprint"].values())))
    keys |= set(report["phases"]["release"]["cycles"][0]) | set(report["phases"]["swap_in"]["cold"])
    missing = sorted(k for k in keys if k not in documented)
    assert not missing, f"README's GPU check section does not document: {missing}"
