"""Text to speech on CPU: real-time factor and time to first audio per backend, in-process and through
the gateway, in one run.

    .venvs/tts-svc/bin/python bench/tts.py [--repeats 3] [--quick] [--keep-logs]

Models (all on CPU, nothing downloaded):

* flite (slt) and espeak-ng (en-us): the real voices that ship with Debian's flite and the espeakng-loader
  wheel;
* tiny-piper and tiny-vits: the tiny test models of tools/make_tiny_tts_models.py (plumbing cost only);
* piper-medium-arch: a VITS with the shape of Piper's "medium" voices (hidden 192, HiFi-GAN resblock 2,
  upsampling 8x8x4; 27 M parameters, 79 MB of ONNX), random weights, built with coqui-tts and exported to
  ONNX, then run by Piper exactly as a downloaded voice is: compute per second of audio is that of a real
  medium voice, the sound is noise;
* vits-ljspeech-arch: Coqui's VITS with its default (LJSpeech) shape, random weights, run by coqui-tts;
  ``--device cuda:0`` runs it on a GPU (not run here: no GPU was lent to the session that wrote this).
  ``--quick`` leaves out the two architecture-sized models.

In-process: the backend class called directly (what the worker runs), one sentence at a time, as the
service feeds it; the two paths take turns run by run. Through the gateway: a real tts-svc and gateway on loopback, ``POST /v1/audio/speech``
with ``response_format: pcm`` read as a stream. The text is five Harvard sentences (about 11 s of speech
with a real voice). Per model, the median of ``--repeats`` runs of:

* time to first audio (TTFA): in-process, the first sentence's synthesis; through the gateway, from
  sending the request to the first audio byte;
* real-time factor (RTF): synthesis time / seconds of audio (below 1 is faster than real time).

Targets: through the gateway, the first audio arrives in at most half the time the whole text takes
(streaming pays off; judged where the whole text takes over 250 ms, below that the hops dominate), and
the gateway and service add at most 50 ms to the first audio over the backend alone. Both paths run the
torch and onnxruntime models with one intra-op thread (the catalog's ``torch_threads: 1`` and ``threads:
1``), so that the worker does not fight the HTTP process, the gateway and the client for the cores. Figures are printed, never asserted: a missed target prints MISS; the exit status is non-zero only
when the run itself failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from harness import GATEWAY_PY, ROOT, Processes, fail, free_port, http_call, machine, wait_ready

TTS_PY = ROOT / ".venvs" / "tts-svc" / "bin" / "python"
sys.path.insert(0, str(ROOT / "tts-svc"))  # tts_svc: the bench runs with the tts environment

TEXT = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
        "It's easy to tell the depth of a well. These days a chicken leg is a rare dish. "
        "Rice is often served in round bowls.")
VOICES = {"flite": "slt", "espeak-ng": "en-us", "tiny-piper": "tiny", "tiny-vits": "tiny",
          "piper-medium-arch": "medium", "vits-ljspeech-arch": "ljspeech"}
TTFA_SHARE_TARGET = 0.5
SHARE_APPLIES_S = 0.25  # the share target is judged only where the whole text takes longer than this
TTFA_OVERHEAD_TARGET_MS = 50.0


def build_models(out: Path, quick: bool, device: str = "cpu") -> Path:
    """The tiny catalog, plus the two architecture-sized models unless ``quick``."""
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_tiny_tts_models.py"), str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    catalog = out / "catalog.yaml"
    if quick:
        return catalog
    t0 = time.monotonic()
    _build_piper_medium_arch(out / "piper-medium-arch")
    _build_vits_ljspeech_arch(out / "vits-ljspeech-arch")
    extra = f"""
  - {{id: piper-medium-arch, family: tts, backend: piper, source: {out}/piper-medium-arch/medium.onnx, device: cpu,
     dtype: float32, memory_estimate_mb: 400, max_batch: 1, max_wait_ms: 0, options: {{voice: medium, threads: 1}}}}
  - {{id: vits-ljspeech-arch, family: tts, backend: coqui, source: {out}/vits-ljspeech-arch/model.pth, device: {device},
     dtype: float32, memory_estimate_mb: 800, max_batch: 1, max_wait_ms: 0, options: {{voice: ljspeech, torch_threads: 1}}}}
"""
    catalog.write_text(catalog.read_text() + extra)
    print(f"built the architecture-sized models in {time.monotonic() - t0:.0f} s", flush=True)
    return catalog


def _vits(characters: str, args: Any) -> Any:
    import torch
    from TTS.config.shared_configs import BaseAudioConfig
    from TTS.tts.configs.shared_configs import CharactersConfig
    from TTS.tts.configs.vits_config import VitsConfig
    from TTS.tts.models.vits import Vits

    torch.manual_seed(0)
    config = VitsConfig(
        model_args=args, use_phonemes=False, text_cleaner="basic_cleaners", add_blank=True,
        audio=BaseAudioConfig(sample_rate=22050, fft_size=1024, win_length=1024, hop_length=256, num_mels=80),
        characters=CharactersConfig(characters_class="TTS.tts.models.vits.VitsCharacters", pad="<PAD>", eos="<EOS>",
                                    bos="<BOS>", blank="<BLNK>", characters=characters, punctuations="!'(),-.:;? ",
                                    phonemes=""))
    return Vits(config).eval(), config


def _build_piper_medium_arch(out: Path) -> None:
    from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP
    from TTS.tts.configs.vits_config import VitsArgs

    out.mkdir(parents=True)
    n_symbols = max(ids[0] for ids in DEFAULT_PHONEME_ID_MAP.values()) + 1
    # As many symbols as Piper's phoneme ids, so every id it sends has an embedding.
    characters = "".join(chr(0x100 + i) for i in range(n_symbols))
    args = VitsArgs(use_sdp=False, init_discriminator=False, resblock_type_decoder="2",
                    resblock_kernel_sizes_decoder=[3, 5, 7], resblock_dilation_sizes_decoder=[[1, 2], [2, 6], [3, 12]],
                    upsample_rates_decoder=[8, 8, 4], upsample_kernel_sizes_decoder=[16, 16, 8])
    model, _ = _vits(characters, args)
    with warnings.catch_warnings():  # the tracer's warnings about Python branches in the model: expected
        warnings.simplefilter("ignore")
        model.export_onnx(str(out / "medium.onnx"), verbose=False)
    (out / "medium.onnx.json").write_text(json.dumps({
        "audio": {"sample_rate": 22050}, "espeak": {"voice": "en-us"}, "phoneme_type": "espeak",
        "inference": {"noise_scale": 0.667, "length_scale": 1, "noise_w": 0.8}, "phoneme_id_map": DEFAULT_PHONEME_ID_MAP,
        "num_symbols": n_symbols, "num_speakers": 1, "speaker_id_map": {}, "piper_version": "1.0.0"}))


def _build_vits_ljspeech_arch(out: Path) -> None:
    import torch
    from TTS.tts.configs.vits_config import VitsArgs

    out.mkdir(parents=True)
    model, config = _vits("abcdefghijklmnopqrstuvwxyz", VitsArgs(init_discriminator=False))
    torch.save({"model": model.state_dict(), "config": config.to_dict()}, out / "model.pth")
    config.save_json(str(out / "config.json"))


# --- in-process -------------------------------------------------------------------------------------


class InProcess:
    """The backend class called directly, as the worker calls it: one sentence at a time."""

    def __init__(self, catalog: Path, model: str) -> None:
        import torch

        from modelhost.backend import import_backend
        from modelhost.catalog import load_catalog
        from tts_svc.backends import BACKENDS
        from tts_svc.sentences import split_sentences

        torch.set_num_threads(1)  # as the worker does with the catalog's torch_threads: 1
        spec = load_catalog(catalog).get(model)
        self.model = model
        self.backend = import_backend(BACKENDS[spec.backend])(spec, tempfile.mkdtemp(prefix="tts-bench-cache-"))
        self.backend.load()
        self.backend.warmup()
        self.sentences = [s.text for s in split_sentences(TEXT)]

    def run(self) -> dict[str, float]:
        from tts_svc.items import SpeechItem

        times, audio_s = [], 0.0
        for text in self.sentences:
            t0 = time.perf_counter()
            [audio] = self.backend.infer([SpeechItem(text=text, voice=VOICES[self.model])])
            times.append(time.perf_counter() - t0)
            audio_s += audio.duration_s
        return {"ttfa_s": times[0], "total_s": sum(times), "audio_s": audio_s}

    def close(self) -> None:
        self.backend.close()


class ThroughGateway:
    """``POST /v1/audio/speech`` (pcm) read as a stream, through the real gateway and tts-svc."""

    def __init__(self, port: int, model: str) -> None:
        import httpx

        self.model, self.port = model, port
        self.body = {"model": model, "voice": VOICES[model], "input": TEXT, "response_format": "pcm"}
        status, reply = http_call(port, "POST", f"/admin/models/{model}/load", timeout_s=600)
        if status != 200:
            raise RuntimeError(f"loading {model} answered {status}: {reply[:300]!r}")
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
        self.client.post("/v1/audio/speech", json={**self.body, "input": "Warm up."}).raise_for_status()

    def run(self) -> dict[str, float]:
        t0 = time.perf_counter()
        first, size = None, 0
        with self.client.stream("POST", "/v1/audio/speech", json=self.body) as r:
            r.raise_for_status()
            for chunk in r.iter_bytes():
                if chunk and first is None:
                    first = time.perf_counter() - t0
                size += len(chunk)
        return {"ttfa_s": first or float("nan"), "total_s": time.perf_counter() - t0, "audio_s": size / 2 / 24_000}

    def close(self) -> None:
        self.client.close()
        http_call(self.port, "POST", f"/admin/models/{self.model}/unload", timeout_s=120)  # one model at a time


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["rtf"] = statistics.median(r["total_s"] / r["audio_s"] for r in runs if r["audio_s"] > 0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per model and path (median reported)")
    parser.add_argument("--arch-repeats", type=int, default=1, help="runs of the architecture-sized models")
    parser.add_argument("--quick", action="store_true", help="leave out the architecture-sized models")
    parser.add_argument("--device", default="cpu", help="device of vits-ljspeech-arch: cpu (default) or cuda:0")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with the logs")
    args = parser.parse_args(argv)
    if Path(sys.executable).resolve() != TTS_PY.resolve() and not os.environ.get("TTS_BENCH_ANY_PYTHON"):
        print(f"note: run with {TTS_PY} (the tts environment); this is {sys.executable}", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="tts-bench-"))
    print(f"# bench/tts.py on {machine()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    try:
        catalog = build_models(tmp / "models", args.quick, args.device)
        models = [m for m in VOICES if not args.quick or not m.endswith("-arch")]
        rows: dict[str, dict[str, Any]] = {}
        with Processes(tmp) as procs:
            svc_port, gw_port = free_port(), free_port()
            procs.start("tts-svc", [TTS_PY, "-m", "tts_svc"], env={
                "TTS_SVC_CATALOG": str(catalog), "TTS_SVC_PORT": str(svc_port), "TTS_SVC_LOG_LEVEL": "WARNING"})
            procs.start("gateway", [GATEWAY_PY, "-m", "gateway"], env={
                "GATEWAY_CATALOG": str(catalog), "GATEWAY_PORT": str(gw_port), "GATEWAY_LOG_LEVEL": "WARNING",
                "GATEWAY_SERVICES": json.dumps({"tts": f"http://127.0.0.1:{svc_port}"}),
                "GATEWAY_DATA_DIR": str(tmp / "gateway-data")})
            wait_ready(procs, "tts-svc", svc_port, "/health/ready")
            wait_ready(procs, "gateway", gw_port, "/health/ready")
            for model in models:
                # The two paths take turns, run by run, so a busy spell of the shared CPUs falls on both.
                paths = {"in_process": InProcess(catalog, model), "gateway": ThroughGateway(gw_port, model)}
                runs: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
                try:
                    for _ in range(_repeats(model, args)):
                        for name, path in paths.items():
                            runs[name].append(path.run())
                finally:
                    for path in paths.values():
                        path.close()
                rows[model] = {name: _median(r) for name, r in runs.items()}
                for name, r in rows[model].items():
                    print(f"{name:10s} {model}: {json.dumps({k: round(v, 4) for k, v in r.items()})}", flush=True)
        print_table(rows)
    except Exception as e:  # noqa: BLE001 - report and exit non-zero
        fail(f"{type(e).__name__}: {e}")
        print(f"logs kept in {tmp}", file=sys.stderr)
        return 1
    if args.keep_logs:
        print(f"logs in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _repeats(model: str, args: argparse.Namespace) -> int:
    return args.arch_repeats if model.endswith("-arch") else args.repeats


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    print()
    print("| model | in-process TTFA ms | in-process RTF | gateway TTFA ms | gateway total s | gateway RTF | "
          "audio s | TTFA / total | added to TTFA ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    verdicts = []
    for model, r in rows.items():
        ip, gw = r["in_process"], r["gateway"]
        share = gw["ttfa_s"] / gw["total_s"]
        added_ms = (gw["ttfa_s"] - ip["ttfa_s"]) * 1000
        print(f"| {model} | {ip['ttfa_s'] * 1000:.1f} | {ip['rtf']:.3f} | {gw['ttfa_s'] * 1000:.1f} | {gw['total_s']:.2f} | "
              f"{gw['rtf']:.3f} | {gw['audio_s']:.1f} | {share:.2f} | {added_ms:.1f} |")
        share_verdict = ("PASS" if share <= TTFA_SHARE_TARGET else "MISS") if gw["total_s"] > SHARE_APPLIES_S else \
            f"n/a (the whole text took under {SHARE_APPLIES_S * 1000:.0f} ms)"
        verdicts.append(f"{model}: ttfa_share={share:.2f} {share_verdict} "
                        f"added_ttfa_ms={added_ms:.1f} {'PASS' if added_ms <= TTFA_OVERHEAD_TARGET_MS else 'MISS'}")
    print()
    for v in verdicts:
        print(v)


if __name__ == "__main__":
    sys.exit(main())
