"""Speech to text: real-time factor (seconds of compute per second of audio) per backend, in-process and
through the gateway, in one run.

    .venvs/asr-svc/bin/python bench/asr.py [--catalog build/tiny-models/catalog.yaml] [--repeats 5]
    .venvs/asr-svc/bin/python bench/asr.py --full-size large-v2 --device cuda      (with a GPU lent)

The clip: ``--sentences`` sentences spoken by flite (Debian), 0.6 s of silence between them (about 20 s).
For each model of the catalog's asr family (the tiny Whisper models and pocketsphinx):

* in-process: the backend class loaded in this process, warmed up, then ``infer`` on the clip: the model's
  own cost, nothing else (with as many framework threads as the service's worker gets);
* gateway: asr-svc (its own environment, its worker process) and a gateway in front of it, started here on
  loopback; ``POST /v1/audio/transcriptions`` with the clip as a WAV upload, after one warm-up request (which
  loads the model): upload, decode, the worker hop, formatting, two HTTP hops.

The two paths run ``--repeats`` times each, in turn, so that a slow spell of the shared CPUs falls on both.

RTF = median wall time / clip duration; below 1 is faster than real time. The difference between the two
columns is what the service and the gateway add per request. pocketsphinx's word error rate on the clip is
printed as a sanity check (the tiny Whisper models have random weights and only say "hello").

``--full-size ARCH`` (with ``--device cuda`` on a GPU box): builds a CTranslate2 Whisper of that
architecture with random weights (float16; transformers is needed, as for the tiny models), forbids the
end-of-text token so that every 30 s window decodes exactly ``--tokens`` tokens, and measures faster-whisper
in-process on a clip of ``--minutes`` minutes, unbatched and with BatchedInferencePipeline at batch 8.
Reference (faster-whisper's README, large-v2 on an RTX 3070 Ti): RTF about 0.08 unbatched, 0.02 at batch 8.
Figures are printed, never asserted; the exit status is non-zero only if the run itself failed.
"""

from __future__ import annotations

import os

# The same CPU threads for the frameworks in this process as the service's worker gets (modelhost leaves one
# core to the HTTP process), set before numpy and torch are imported: in-process and via-gateway figures
# then differ by the service and the gateway, not by thread counts.
_THREADS = os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
for _var in ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import GATEWAY_PY, ROOT, Processes, free_port, http_call, machine, wait_ready  # noqa: E402

ASR_PY = ROOT / ".venvs" / "asr-svc" / "bin" / "python"
SR = 16000
SENTENCES = [
    "hello world this is a test",
    "one two three four five",
    "the quick brown fox jumps over the lazy dog",
    "please turn on the kitchen lights",
    "what time is it",
    "the weather is nice today",
    "six seven eight nine ten",
    "turn off the radio please",
]


def flite_pcm(text: str) -> np.ndarray:
    from asr_svc.audio import decode_audio

    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", f.name], check=True, timeout=60)
        data = Path(f.name).read_bytes()
    return decode_audio(data, max_bytes=1 << 30, max_duration_s=3600, silence_dbfs=-60).pcm


def make_clip(n: int) -> tuple[np.ndarray, list[str]]:
    said = [SENTENCES[i % len(SENTENCES)] for i in range(n)]
    gap = np.zeros(int(0.6 * SR), np.int16)
    return np.concatenate([x for s in said for x in (flite_pcm(s), gap)]), said


def wav_bytes(pcm: np.ndarray) -> bytes:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SR)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def multipart(fields: dict[str, str], filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 "Content-Type: audio/wav\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    d = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        prev, d[0] = d[0], i
        for j, hyp in enumerate(hypothesis, start=1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (ref != hyp))
    return d[len(hypothesis)] / max(1, len(reference))


# in-process and through the gateway, interleaved ------------------------------------------------


def load_backend(spec):  # noqa: ANN001, ANN201 - ModelSpec, Backend
    from asr_svc.backends import BACKENDS
    from modelhost.backend import import_backend

    backend = import_backend(BACKENDS[spec.backend])(spec, cache_dir=str(ROOT / "build" / "cache"))
    t0 = time.perf_counter()
    backend.load()
    backend.warmup()
    return backend, time.perf_counter() - t0


def gateway_once(port: int, body: bytes, headers: dict[str, str], model: str) -> tuple[float, dict]:
    t = time.perf_counter()
    status, raw = http_call(port, "POST", "/v1/audio/transcriptions", body, headers, timeout_s=600)
    elapsed = time.perf_counter() - t
    if status != 200:
        raise RuntimeError(f"{model}: gateway answered {status}: {raw[:300]!r}")
    return elapsed, json.loads(raw)


def measure(spec, clip: np.ndarray, audio: bytes, port: int, repeats: int) -> dict:  # noqa: ANN001
    """Both paths, run by run in turn, so that a slow spell of the shared CPUs falls on both."""
    from asr_svc.items import TranscribeItem

    body, ctype = multipart({"model": spec.id, "language": "en", "response_format": "verbose_json"}, "clip.wav", audio)
    headers = {"Content-Type": ctype}
    backend, load_s = load_backend(spec)
    item = TranscribeItem(audio=clip, language="en")
    local, remote = [], []
    try:
        backend.infer([item])  # warm both paths: the first request through the gateway loads the model
        gateway_once(port, body, headers, spec.id)
        for _ in range(repeats):
            t = time.perf_counter()
            [local_result] = backend.infer([item])
            local.append(time.perf_counter() - t)
            elapsed, remote_result = gateway_once(port, body, headers, spec.id)
            remote.append(elapsed)
    finally:
        backend.close()
    return {"local": statistics.median(local), "remote": statistics.median(remote), "load_s": load_s,
            "text": local_result["text"], "same": remote_result["text"] == local_result["text"]}


def run_tiny(args: argparse.Namespace) -> int:
    from modelhost.catalog import load_catalog

    catalog_path = Path(args.catalog)
    if not catalog_path.exists():
        print(f"ERROR: {catalog_path} does not exist; run `make tiny-models`", file=sys.stderr)
        return 2
    models = [m for m in load_catalog(catalog_path).models if m.family == "asr"]
    clip, said = make_clip(args.sentences)
    clip_s = len(clip) / SR
    audio = wav_bytes(clip)
    print(f"# asr bench on {machine()}")
    print(f"# clip: {len(said)} flite sentences, {clip_s:.1f} s; {args.repeats} timed runs per path, interleaved "
          f"(median); {_THREADS} framework thread(s) in-process and in the worker")
    rows = []
    log_dir = Path(tempfile.mkdtemp(prefix="asr-bench-"))
    try:
        with Processes(log_dir) as procs:
            svc_port, gw_port = free_port(), free_port()
            procs.start("asr-svc", [ASR_PY, "-m", "asr_svc"],
                        env={"ASR_SVC_CATALOG": str(catalog_path), "ASR_SVC_PORT": str(svc_port)})
            procs.start("gateway", [GATEWAY_PY, "-m", "gateway"], env={
                "GATEWAY_CATALOG": str(catalog_path), "GATEWAY_PORT": str(gw_port),
                "GATEWAY_SERVICES": json.dumps({"asr": f"http://127.0.0.1:{svc_port}"}),
                "GATEWAY_DATA_DIR": str(log_dir / "gateway-data")})
            wait_ready(procs, "asr-svc", svc_port, "/health/ready")
            wait_ready(procs, "gateway", gw_port, "/health/live")
            for spec in models:
                m = measure(spec, clip, audio, gw_port, args.repeats)
                wer = word_error_rate(" ".join(said).split(), m["text"].split())
                rows.append((spec.id, spec.backend, m["local"], m["remote"], m["load_s"], wer, m["same"]))
            procs.check_alive()
    finally:
        if args.keep_logs:
            print(f"# logs in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)

    print()
    print("| model | backend | in-process RTF | via gateway RTF | added per request | load + warm-up | WER | same text |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for model, backend, local, remote, load_s, wer, same in rows:
        print(f"| {model} | {backend} | {local / clip_s:.3f} | {remote / clip_s:.3f} | {(remote - local) * 1000:.0f} ms "
              f"| {load_s:.1f} s | {wer:.2f} | {'yes' if same else 'no'} |")
    print()
    summary = "; ".join(f"{m} {local / clip_s:.3f} in-process, {remote / clip_s:.3f} via gateway"
                        for m, _, local, remote, *_ in rows)
    print(f"SUMMARY asr RTF on CPU ({os.cpu_count()} cores, {clip_s:.0f} s clip): {summary}")
    return 0


# full-size architecture (GPU) -----------------------------------------------------------------------

ARCHS = {  # d_model, layers (encoder = decoder), heads: Whisper's sizes with 80 mel bins
    "tiny": (384, 4, 6), "base": (512, 6, 8), "small": (768, 12, 12), "medium": (1024, 24, 16), "large-v2": (1280, 32, 20),
}


def build_full_size(arch: str, out: Path) -> None:
    """A CTranslate2 Whisper of a real architecture with random weights (float16 on disk), built the way the
    tiny test model is (tools/make_tiny_asr_models.py), without its one-word decoder."""
    sys.path.insert(0, str(ROOT / "tools"))
    from make_tiny_asr_models import build_ct2_whisper  # noqa: PLC0415

    d, layers, heads = ARCHS[arch]
    work = out.with_name(out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    try:
        build_ct2_whisper(out, work, d_model=d, layers=layers, heads=heads, parrot=False, quantization="float16")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_full_size(args: argparse.Namespace) -> int:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    out = ROOT / "build" / "bench" / f"random-{args.full_size}"
    if not (out / "model.bin").exists():
        t = time.perf_counter()
        build_full_size(args.full_size, out)
        print(f"# built random-weight {args.full_size} in {time.perf_counter() - t:.0f} s: {out}")
    clip, _ = make_clip(len(SENTENCES))
    reps = max(1, math.ceil(args.minutes * 60 * SR / len(clip)))
    audio = (np.tile(clip, reps) / 32768.0).astype(np.float32)
    clip_s = len(audio) / SR
    compute = "float16" if args.device == "cuda" else "int8"
    model = WhisperModel(str(out), device=args.device, compute_type=compute)
    print(f"# {args.full_size} random weights on {model.model.device} ({model.model.compute_type}), "
          f"{clip_s / 60:.1f} min clip, {args.tokens} tokens per 30 s window (end-of-text suppressed)")
    common = dict(language="en", beam_size=1, temperature=0.0, max_new_tokens=args.tokens, without_timestamps=True,
                  suppress_tokens=[-1, 50257], condition_on_previous_text=False)
    results = {}
    for name, engine, extra in (("unbatched", model, {"vad_filter": False}),
                                ("batch 8", BatchedInferencePipeline(model=model), {"batch_size": 8})):
        list(engine.transcribe(audio[: 30 * SR], **common, **extra)[0])  # warm-up
        t = time.perf_counter()
        segments = list(engine.transcribe(audio, **common, **extra)[0])
        elapsed = time.perf_counter() - t
        results[name] = elapsed / clip_s
        print(f"| {args.full_size} | {name} | RTF {elapsed / clip_s:.4f} | {len(segments)} segments |")
    print(f"SUMMARY faster-whisper {args.full_size} (random weights) on {args.device}: RTF "
          f"{results['unbatched']:.4f} unbatched, {results['batch 8']:.4f} at batch 8 "
          f"(reference large-v2 on an RTX 3070 Ti: 0.08 and 0.02)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", default=str(ROOT / "build" / "tiny-models" / "catalog.yaml"))
    parser.add_argument("--sentences", type=int, default=8, help="sentences in the clip (about 2.5 s each)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model and path")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--full-size", choices=sorted(ARCHS), help="faster-whisper with a full-size random model instead")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="for --full-size")
    parser.add_argument("--minutes", type=float, default=5.0, help="clip length for --full-size")
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per 30 s window for --full-size")
    args = parser.parse_args()
    if shutil.which("flite") is None:
        print("ERROR: flite is not installed (apt-get install -y flite)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return run_full_size(args) if args.full_size else run_tiny(args)


if __name__ == "__main__":
    sys.exit(main())
