"""Face recognition throughput: faces per second through the gateway against the same backend called
in-process, in one run, and what dynamic batching buys.

    .venvs/face-svc/bin/python bench/faces.py [--rounds 3] [--window-s 1.5] [--keep-logs]
    .venvs/face-svc/bin/python bench/faces.py --device cuda:0 --arch r100 --batch 64      (with a GPU lent)

The unit of work is one face embedding: ``POST /v1/faces/embed`` with aligned 112x112 crops (PNG, as detect
returns them), ``--batch`` crops per request. The crops are 16 shifted and mirrored crops of the astronaut's
face (scikit-image's photo). Models, all built here, nothing downloaded:

* ``tiny-insightface``: the tiny test pack of tools/make_tiny_face_models.py, as the catalog has it (its
  recogniser is a pooling and a projection: almost free, so its figures are the machinery's cost);
* ``arcface-mbf-arch`` (``--arch mbf``, the default): the tiny pack's detector with a recogniser of the shape
  of insightface's ``w600k_mbf`` (MobileFaceNet, buffalo_s's recogniser, 0.44 G multiply-adds per face), random
  weights: the compute per face of a real CPU-sized recogniser. ``--arch r50`` / ``r100``: ArcFace IResNet-50
  / -100 (buffalo_l's ``w600k_r50``; 6.3 and 12.1 G multiply-adds per face), for a GPU.

The recogniser ONNX is built once into build/bench/ (deterministic) and named with the ``rec_model`` option,
so the backend runs it through the same code as a downloaded pack. Paths, per model:

* **in-process**: the backend class (``face_svc.backends.BACKENDS``) loaded in this process with the same
  catalog entry (same threads), ``infer([EmbedItem(crops)])`` with ``--batch`` crops: the model's own cost;
* **gateway, seq.**: face-svc and a gateway on loopback, one ``--batch``-crop request at a time;
* **gateway, c4**: the same at concurrency 4 (the HTTP work overlaps the model's; the service may batch the
  requests together: the mean recognition batch is printed);
* **batching**: 1 crop per request at concurrency 16, against a second face-svc + gateway pair whose catalog
  copy sets ``max_batch: 1``: gain = faces/s with the catalog's max_batch / with max_batch 1.

Every path runs for a window (``--window-s``, or six in-process batches if longer) and the paths take turns
round by round (``--rounds``, median reported), so a slow spell of the shared CPUs falls on all of them.
Target: gateway at concurrency 4 >= 90 % of in-process at batch 16 on CPU. Figures are printed, never
asserted; the exit status is non-zero only when the run itself failed.

GPU (``--device cuda:0``): the architecture model's catalog entry asks for the GPU, in-process and in the
service alike; the face environment then needs onnxruntime-gpu instead of onnxruntime (``make
.venvs/face-svc/.installed FACE_ORT='onnxruntime-gpu[cuda,cudnn]==1.22.0'``, as the face image has it). The
device really used is read back from the session; a CPU fallback fails the run. Reference: about
1,000-1,900 faces/s for ArcFace R50/R100 at batch 64 on an RTX 2080 SUPER with TensorRT (this runs the CUDA
provider, not TensorRT).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import GATEWAY_PY, ROOT, Processes, fail, free_port, http_call, machine, wait_ready  # noqa: E402

FACE_PY = ROOT / ".venvs" / "face-svc" / "bin" / "python"
TINY = "tiny-insightface"
TARGET = 0.90
CONCURRENCY = 4
BATCHING_CONCURRENCY = 16
# Per 112x112 face, in multiply-adds, as insightface's tables count "GFLOPs" (the graphs built here: 0.44 and
# 6.31 G for mbf and r50, 2.1 M and 43.6 M parameters).
ARCH_FLOPS = {"mbf": "0.45", "r50": "6.3", "r100": "12.1"}
RECOGNITION_BATCH = re.compile(rb'"recognition_batch":\s*(\d+)')


# --- models -------------------------------------------------------------------------------------------


def build_tiny_catalog(out: Path) -> Any:
    """The tiny face pack and its catalog entry, built fresh (about a second)."""
    from modelhost.catalog import load_catalog

    subprocess.run([sys.executable, str(ROOT / "tools" / "make_tiny_face_models.py"), str(out)], check=True,
                   stdout=subprocess.DEVNULL, timeout=300)
    return load_catalog(out / "catalog.yaml").get(TINY)


class _Graph:
    """An ONNX graph under construction: convolutions with batch norms and PReLUs, random weights
    (He-scaled, so activations stay finite through 100 layers: speed does not depend on the values, but
    infinities and denormals would)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def _const(self, value: np.ndarray, prefix: str) -> str:
        from onnx import numpy_helper

        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        from onnx import helper

        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, pad: int | None = None,
             gain: float = 1.0) -> str:
        fan_in = cin // groups * k * k
        w = self.rng.standard_normal((cout, cin // groups, k, k), dtype=np.float32) * np.float32(gain * (2.0 / fan_in) ** 0.5)
        p = k // 2 if pad is None else pad
        return self.node("Conv", [x, self._const(w, "w")], kernel_shape=[k, k], strides=[stride, stride], pads=[p] * 4,
                         group=groups)

    def bn(self, x: str, c: int) -> str:
        params = [self._const(v, "bn") for v in (np.ones(c), np.zeros(c), np.zeros(c), np.ones(c))]
        return self.node("BatchNormalization", [x, *params], epsilon=1e-5)

    def prelu(self, x: str, c: int) -> str:
        return self.node("PRelu", [x, self._const(np.full((c, 1, 1), 0.25), "slope")])

    def block(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, pad: int | None = None,
              act: bool = True, gain: float = 1.0) -> str:
        y = self.bn(self.conv(x, cin, cout, k, stride, groups, pad, gain), cout)
        return self.prelu(y, cout) if act else y

    def embedding(self, x: str, features: int) -> str:
        """Flatten, a 512-d linear layer and a batch norm: the embedding head."""
        flat = self.node("Flatten", [x], axis=1)
        w = self.rng.standard_normal((features, 512), dtype=np.float32) * np.float32((1.0 / features) ** 0.5)
        return self.bn(self.node("MatMul", [flat, self._const(w, "fc")]), 512)

    def save(self, output: str, name: str, path: Path) -> None:
        import onnx
        from onnx import TensorProto, helper

        self.nodes.append(helper.make_node("Identity", [output], ["embedding"]))
        graph = helper.make_graph(self.nodes, name,
                                  [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
                                  [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 512])], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="roundhouse-bench")
        model.ir_version = 8
        onnx.checker.check_model(model)
        tmp = path.with_name(path.name + ".partial")
        onnx.save(model, str(tmp))
        tmp.replace(path)


def build_mobilefacenet(path: Path) -> None:
    """insightface's MobileFaceNet (arcface_torch ``get_mbf``: scale 2, blocks 1-4-6-2, GDC head), the
    recogniser of buffalo_s (w600k_mbf.onnx)."""
    g = _Graph(seed=0)

    def depthwise(x: str, cin: int, cout: int, stride: int, groups: int, residual: bool = False) -> str:
        y = g.block(x, cin, groups, 1)
        y = g.block(y, groups, groups, 3, stride, groups=groups)
        y = g.block(y, groups, cout, 1, act=False, gain=0.5 if residual else 1.0)
        return g.node("Add", [x, y]) if residual else y

    x = g.block("input.1", 3, 128, 3, stride=2)           # 56x56
    x = g.block(x, 128, 128, 3, groups=64)
    x = depthwise(x, 128, 128, 2, 128)                    # 28x28
    for _ in range(4):
        x = depthwise(x, 128, 128, 1, 128, residual=True)
    x = depthwise(x, 128, 256, 2, 256)                    # 14x14
    for _ in range(6):
        x = depthwise(x, 256, 256, 1, 256, residual=True)
    x = depthwise(x, 256, 256, 2, 512)                    # 7x7
    for _ in range(2):
        x = depthwise(x, 256, 256, 1, 256, residual=True)
    x = g.block(x, 256, 512, 1)
    x = g.block(x, 512, 512, 7, groups=512, pad=0, act=False)  # GDC: a global depthwise 7x7
    g.save(g.embedding(x, 512), "mobilefacenet", path)


IRESNET_LAYERS = {"r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}


def build_iresnet(path: Path, layers: tuple[int, ...]) -> None:
    """insightface's IResNet (arcface_torch ``iresnet50/100``): the recogniser of buffalo_l (w600k_r50)."""
    g = _Graph(seed=0)
    x = g.block("input.1", 3, 64, 3)
    cin = 64
    for planes, blocks in zip((64, 128, 256, 512), layers):
        for b in range(blocks):
            stride = 2 if b == 0 else 1
            y = g.bn(x, cin)
            y = g.block(y, cin, planes, 3)
            y = g.bn(g.conv(y, planes, planes, 3, stride, gain=0.5), planes)
            shortcut = g.bn(g.conv(x, cin, planes, 1, stride), planes) if b == 0 else x
            x, cin = g.node("Add", [y, shortcut]), planes
    g.save(g.embedding(g.bn(x, 512), 512 * 7 * 7), f"iresnet_{path.stem}", path)


def arch_recogniser(arch: str) -> Path:
    path = ROOT / "build" / "bench" / f"face-rec-{arch}-random.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        build_mobilefacenet(path) if arch == "mbf" else build_iresnet(path, IRESNET_LAYERS[arch])
        print(f"# built {path.relative_to(ROOT)} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s",
              flush=True)
    return path


def write_catalog(path: Path, specs: list[Any], max_batch: int | None = None) -> None:
    """The specs as a catalog (absolute sources), each with ``max_batch`` when given."""
    import yaml

    models = [s.model_dump(mode="json") | ({} if max_batch is None else {"max_batch": max_batch}) for s in specs]
    path.write_text(f"# written by bench/faces.py\n{yaml.safe_dump({'models': models}, sort_keys=False)}")


# --- crops and requests -------------------------------------------------------------------------------


def face_crops(n: int) -> list[bytes]:
    """``n`` 112x112 PNG crops of the astronaut's face (scikit-image), each shifted or mirrored a little."""
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    crops = []
    for i in range(n):
        dx, dy, grow = (i % 4) * 4 - 6, (i // 4 % 4) * 4 - 6, (i % 3) * 6
        box = (160 + dx - grow, 50 + dy - grow, 290 + dx + grow, 180 + dy + grow)
        crop = photo.crop(box).resize((112, 112), Image.Resampling.BICUBIC)
        if i % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        crop.save(buf, format="PNG")
        crops.append(buf.getvalue())
    return crops


def decoded(png: bytes) -> np.ndarray:
    """The pixels the service will hand the backend, decoded the way it does."""
    from face_svc.images import decode_image

    return decode_image(png, max_bytes=1 << 24, max_pixels=1 << 24, max_side=2048).pixels


def embed_body(model: str, crops: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart ``POST /v1/faces/embed`` body, built once."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'.encode()]
    for i, png in enumerate(crops):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="crop{i}.png"\r\n'
                     "Content-Type: image/png\r\n\r\n".encode() + png + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


# --- the two paths -----------------------------------------------------------------------------------


class InProcess:
    """The backend class loaded here with the model's catalog entry: what the service's worker runs."""

    def __init__(self, spec: Any, cache_dir: str) -> None:
        from face_svc.backends import BACKENDS
        from modelhost.backend import import_backend

        self.backend = import_backend(BACKENDS[spec.backend])(spec, cache_dir)
        self.device = self.backend.load()
        self.backend.warmup()

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        from face_svc.items import EmbedItem

        [result] = self.backend.infer([EmbedItem(crops=tuple(crops))])
        return np.stack(result["embeddings"])

    def run(self, crops: list[np.ndarray], window_s: float) -> dict[str, float]:
        faces, t0 = 0, time.perf_counter()
        while True:  # bounded by the window: at least one batch
            self.embed(crops)
            faces += len(crops)
            if time.perf_counter() - t0 >= window_s:
                break
        return {"faces_s": faces / (time.perf_counter() - t0), "batch": float(len(crops))}

    def close(self) -> None:
        self.backend.close()


class Gateway:
    """``POST /v1/faces/embed`` through one real gateway and face-svc pair."""

    def __init__(self, port: int) -> None:
        import aiohttp

        self.port = port
        self.url = f"http://127.0.0.1:{port}/v1/faces/embed"
        # Idle connections are dropped after 1 s, well before uvicorn's keep-alive timeout (5 s) closes them
        # from the other side: reusing one the server is closing fails the request ("Can not write request
        # body"), and each pair idles while the other paths run.
        connector = aiohttp.TCPConnector(limit=BATCHING_CONCURRENCY, keepalive_timeout=1.0)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600))

    async def embed(self, body: bytes, headers: dict[str, str]) -> np.ndarray:
        async with self.session.post(self.url, data=body, headers=headers) as resp:
            raw = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST /v1/faces/embed answered {resp.status}: {raw[:300]!r}")
        return np.array([d["embedding"] for d in json.loads(raw)["data"]], np.float32)

    async def run(self, bodies: list[tuple[bytes, dict[str, str], int]], concurrency: int,
                  window_s: float) -> dict[str, float]:
        """``concurrency`` clients send the bodies in turn until the window closes (each sends at least one);
        faces counted from the answers, the recognition batch read from each answer's tail."""
        deadline = time.perf_counter() + window_s
        sent, faces, batches = 0, 0, []

        async def client() -> None:
            nonlocal sent, faces
            while True:
                body, headers, n = bodies[sent % len(bodies)]
                sent += 1
                async with self.session.post(self.url, data=body, headers=headers) as resp:
                    raw = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"POST /v1/faces/embed answered {resp.status}: {raw[:300]!r}")
                m = RECOGNITION_BATCH.search(raw, max(0, len(raw) - 400))
                faces += n
                batches.append(int(m.group(1)) if m else float("nan"))
                if time.perf_counter() >= deadline:
                    return

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return {"faces_s": faces / (time.perf_counter() - t0), "batch": statistics.fmean(batches)}

    async def close(self) -> None:
        await self.session.close()


def admin(port: int, action: str, model: str) -> dict:
    status, body = http_call(port, "POST", f"/admin/models/{model}/{action}", timeout_s=600)
    if status != 200:
        raise RuntimeError(f"{action} {model} through the gateway on port {port} answered {status}: {body[:300]!r}")
    return json.loads(body or b"{}")


# --- one model ----------------------------------------------------------------------------------------


PATHS = ("in_process", "gw_seq", "gw_c4", "batched", "unbatched")


async def measure(spec: Any, args: argparse.Namespace, gw: Gateway, gw1: Gateway, pngs: list[bytes],
                  cache_dir: str) -> dict[str, Any]:
    crops = [decoded(p) for p in pngs]
    batch_body = embed_body(spec.id, pngs) + (len(pngs),)
    single_bodies = [embed_body(spec.id, [p]) + (1,) for p in pngs]
    loaded = [admin(gw.port, "load", spec.id), admin(gw1.port, "load", spec.id)]
    local = InProcess(spec, cache_dir)
    try:
        if spec.wants_gpu and not local.device.startswith("cuda"):
            raise RuntimeError(f"{spec.id} asked for {spec.device} but runs on {local.device}: this onnxruntime has "
                               "no usable CUDA provider (install onnxruntime-gpu in the face environment)")
        # Warm-up, and the check that both paths compute the same embeddings.
        t0 = time.perf_counter()
        reference = local.embed(crops)
        local.embed(crops)
        batch_s = (time.perf_counter() - t0) / 2
        via = await gw.embed(*batch_body[:2])
        via1 = np.concatenate([await gw1.embed(*b[:2]) for b in single_bodies[:2]])
        drift = max(float(np.abs(via - reference).max()), float(np.abs(via1 - reference[:2]).max()))
        await gw.run(single_bodies, BATCHING_CONCURRENCY, 0.2)
        await gw1.run(single_bodies, BATCHING_CONCURRENCY, 0.2)
        window_s = max(args.window_s, 6 * batch_s)
        runs: dict[str, list[dict[str, float]]] = {p: [] for p in PATHS}
        for _ in range(args.rounds):  # the paths take turns, round by round
            runs["in_process"].append(local.run(crops, window_s))
            runs["gw_seq"].append(await gw.run([batch_body], 1, window_s))
            runs["gw_c4"].append(await gw.run([batch_body], CONCURRENCY, window_s))
            runs["batched"].append(await gw.run(single_bodies, BATCHING_CONCURRENCY, window_s))
            runs["unbatched"].append(await gw1.run(single_bodies, BATCHING_CONCURRENCY, window_s))
    finally:
        local.close()
    for port in (gw.port, gw1.port):
        admin(port, "unload", spec.id)  # one model at a time in the services
    out: dict[str, Any] = {p: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for p, rs in runs.items()}
    out.update(device=local.device, drift=drift, window_s=window_s,
               service_device=loaded[0].get("device", "?"), max_batch=spec.max_batch)
    return out


def print_tables(rows: dict[str, dict[str, Any]], batch: int) -> None:
    print()
    print(f"| model | device | in-process b{batch} faces/s | gateway seq. faces/s | ratio | added ms/request | "
          f"gateway c{CONCURRENCY} faces/s | ratio | mean rec. batch c{CONCURRENCY} | max |diff| |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model, r in rows.items():
        ip, seq, c4 = r["in_process"]["faces_s"], r["gw_seq"]["faces_s"], r["gw_c4"]["faces_s"]
        added_ms = (batch / seq - batch / ip) * 1000
        print(f"| {model} | {r['device']} | {ip:,.1f} | {seq:,.1f} | {seq / ip:.2f} | {added_ms:.1f} | {c4:,.1f} | "
              f"{c4 / ip:.2f} | {r['gw_c4']['batch']:.1f} | {r['drift']:.1e} |")
    print()
    print(f"| model | 1 crop/request, c{BATCHING_CONCURRENCY}: max_batch (catalog) | faces/s | mean rec. batch | "
          "max_batch 1 faces/s | batching gain |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for model, r in rows.items():
        on, off = r["batched"]["faces_s"], r["unbatched"]["faces_s"]
        print(f"| {model} | {r['max_batch']} | {on:,.1f} | {r['batched']['batch']:.1f} | {off:,.1f} | {on / off:.2f} |")
    print()
    for model, r in rows.items():
        ip = r["in_process"]["faces_s"]
        ratio = r["gw_c4"]["faces_s"] / ip
        verdict = "PASS" if ratio >= TARGET else "MISS"
        print(f"{model}: gateway_vs_inprocess={ratio:.2f} {verdict}(>={TARGET:.2f}) "
              f"(sequential {r['gw_seq']['faces_s'] / ip:.2f}) "
              f"batching_gain={r['batched']['faces_s'] / r['unbatched']['faces_s']:.2f}")


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, Any]]:
    tiny = build_tiny_catalog(tmp / "models")
    rec = arch_recogniser(args.arch)
    arch = tiny.model_copy(update={
        "id": f"arcface-{args.arch}-arch", "device": args.device, "memory_estimate_mb": 1024,
        "options": {**tiny.options, "det_model": "det_tiny.onnx", "rec_model": str(rec)}})
    specs = [tiny, arch] if not args.arch_only else [arch]
    write_catalog(tmp / "catalog.yaml", specs)
    write_catalog(tmp / "catalog-max-batch-1.yaml", specs, max_batch=1)
    pngs = face_crops(args.batch)
    print(f"# crops: {len(pngs)} PNGs of 112x112, {sum(map(len, pngs)) / len(pngs) / 1024:.0f} KiB each on average; "
          f"{args.rounds} rounds per path, interleaved (median)", flush=True)
    rows: dict[str, dict[str, Any]] = {}
    with Processes(tmp) as procs:
        ports = {}
        for label, catalog in (("", tmp / "catalog.yaml"), ("-max-batch-1", tmp / "catalog-max-batch-1.yaml")):
            svc_port, gw_port = free_port(), free_port()
            ports[label] = (svc_port, gw_port)
            procs.start(f"face-svc{label}", [FACE_PY, "-m", "face_svc"], env={
                "FACE_SVC_CATALOG": str(catalog), "FACE_SVC_PORT": str(svc_port), "FACE_SVC_LOG_LEVEL": "WARNING",
                "FACE_SVC_MAX_FACES": str(max(64, args.batch)), "FACE_SVC_CACHE_DIR": str(tmp / "cache")})
            procs.start(f"gateway{label}", [GATEWAY_PY, "-m", "gateway"], env={
                "GATEWAY_CATALOG": str(catalog), "GATEWAY_PORT": str(gw_port), "GATEWAY_LOG_LEVEL": "WARNING",
                "GATEWAY_API_KEYS": "[]", "GATEWAY_SERVICES": json.dumps({"face": f"http://127.0.0.1:{svc_port}"}),
                "GATEWAY_DATA_DIR": str(tmp / f"gateway{label}-data")})
        for label, (svc_port, gw_port) in ports.items():
            wait_ready(procs, f"face-svc{label}", svc_port, "/health/ready", deadline_s=120)
            wait_ready(procs, f"gateway{label}", gw_port, "/health/ready", deadline_s=60)
        gw, gw1 = Gateway(ports[""][1]), Gateway(ports["-max-batch-1"][1])
        try:
            for spec in specs:
                t0 = time.perf_counter()
                rows[spec.id] = await measure(spec, args, gw, gw1, pngs, str(tmp / "cache"))
                r = rows[spec.id]
                print(f"# {spec.id}: on {r['device']} in-process, {r['service_device']} in the service; window "
                      f"{r['window_s']:.1f} s; {time.perf_counter() - t0:.0f} s", flush=True)
                procs.check_alive()
        finally:
            await gw.close()
            await gw1.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every path, interleaved (median reported)")
    parser.add_argument("--window-s", type=float, default=1.5,
                        help="seconds per path and round (at least six in-process batches' time)")
    parser.add_argument("--batch", type=int, default=16, help="crops per request and per in-process call")
    parser.add_argument("--arch", choices=["mbf", *IRESNET_LAYERS], default="mbf",
                        help="recogniser architecture of the random-weight model (mbf: buffalo_s; r50: buffalo_l)")
    parser.add_argument("--device", default="cpu", help="device of the architecture model: cpu or cuda:N")
    parser.add_argument("--arch-only", action="store_true", help="leave out tiny-insightface")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with every log")
    args = parser.parse_args(argv)
    if Path(sys.executable).resolve() != FACE_PY.resolve():
        print(f"note: run with {FACE_PY} (the face environment); this is {sys.executable}", file=sys.stderr)
    started = time.monotonic()
    print(f"# bench/faces.py on {machine()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print(f"# recogniser: --arch {args.arch} ({ARCH_FLOPS[args.arch]} G multiply-adds per face, random weights) on "
          f"{args.device}; batch {args.batch}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="faces-bench-"))
    try:
        rows = asyncio.run(run(args, tmp))
    except Exception as e:  # noqa: BLE001 - report and exit non-zero
        fail(f"{type(e).__name__}: {e}")
        print(f"logs kept in {tmp}", file=sys.stderr)
        return 1
    if args.keep_logs:
        print(f"# logs in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print_tables(rows, args.batch)
    print(f"# whole run {time.monotonic() - started:.0f} s, load average after "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.device == "cpu":
        print("# not run here: a full-size recogniser at batch 64 on a GPU (no GPU was lent to the session that "
              "wrote this); with onnxruntime-gpu in the face environment: --device cuda:0 --arch r100 --batch 64")
    return 0


if __name__ == "__main__":
    sys.exit(main())
