"""LVFace-B, the seeds' recogniser, through the catalog entry models.yaml ships (``lvface-b``): a recogniser
graph with LVFace-B's structure and shapes, random weights, is loaded and embeds through face-svc's HTTP API.

LVFace-B (ByteDance, github.com/bytedance/LVFace, backbones ``vit_b``): a ViT on ArcFace-aligned 112x112
RGB crops cut into 9 px patches (12x12 = 144 tokens), embedding width 512, 24 blocks of 8-head
attention, layer norm, then the flattened tokens through a linear layer and batch norm to a 512-d feature.
Its ONNX export takes ``[N, 3, 112, 112]`` normalised as ``(x / 255 - 0.5) / 0.5`` (its inference_onnx.py),
which is the entry's ``rec_mean: 127.5, rec_std: 127.5``, and returns ``[N, 512]``. The graph below keeps
every one of those shapes and the operator structure (patch convolution, position embedding, pre-norm
attention and MLP blocks, the flatten-linear-batch-norm head) with two narrow blocks instead of 24 wide
ones, so it builds and runs in a second."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from face_svc.config import FaceSettings
from face_svc.main import create_app

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]
MODEL = "lvface-b"
INPUT = 112
PATCH = 9
TOKENS = (INPUT // PATCH) ** 2  # 144
WIDTH, HEADS, BLOCKS, FEATURES = 32, 4, 2, 512  # LVFace-B: 512, 8, 24, 512


def build_vit_recognizer(path: Path, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nph

    rng = np.random.RandomState(seed)
    inits: list = []
    nodes: list = []

    def weight(name: str, *shape: int, scale: float = 0.05) -> str:
        inits.append(nph.from_array((rng.randn(*shape) * scale).astype(np.float32), name))
        return name

    def const(name: str, values: list[int]) -> str:
        inits.append(nph.from_array(np.array(values, np.int64), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=f"vit/{output}", **attrs))
        return output

    def layer_norm(x: str, name: str) -> str:
        inits.append(nph.from_array(np.ones(WIDTH, np.float32), f"{name}.gamma"))
        inits.append(nph.from_array(np.zeros(WIDTH, np.float32), f"{name}.beta"))
        return node("LayerNormalization", [x, f"{name}.gamma", f"{name}.beta"], f"{name}.out", axis=-1, epsilon=1e-6)

    head = WIDTH // HEADS
    x = node("Conv", ["input", weight("patch_embed.w", WIDTH, 3, PATCH, PATCH), weight("patch_embed.b", WIDTH)],
             "patches", kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])                    # [N, W, 12, 12]
    x = node("Reshape", [x, const("tokens_shape", [0, WIDTH, TOKENS])], "tokens_cf")
    x = node("Transpose", [x], "tokens", perm=[0, 2, 1])                                      # [N, 144, W]
    x = node("Add", [x, weight("pos_embed", 1, TOKENS, WIDTH)], "embedded")
    for i in range(BLOCKS):
        b = f"blocks.{i}"
        h = layer_norm(x, f"{b}.norm1")
        qkv = node("MatMul", [h, weight(f"{b}.qkv.w", WIDTH, 3 * WIDTH)], f"{b}.qkv")
        qkv = node("Reshape", [qkv, const(f"{b}.qkv_shape", [0, TOKENS, 3, HEADS, head])], f"{b}.qkv5")
        qkv = node("Transpose", [qkv], f"{b}.qkv_t", perm=[2, 0, 3, 1, 4])                    # [3, N, H, T, d]
        for j, n in enumerate("qkv"):
            inits.append(nph.from_array(np.array(j, np.int64), f"{b}.{n}_index"))  # a scalar: Gather drops the axis
        q, k, v = (node("Gather", [qkv, f"{b}.{n}_index"], f"{b}.{n}", axis=0) for n in "qkv")  # [N, H, T, d]
        kt = node("Transpose", [k], f"{b}.kt", perm=[0, 1, 3, 2])
        scores = node("MatMul", [q, kt], f"{b}.scores")
        inits.append(nph.from_array(np.array(head ** -0.5, np.float32), f"{b}.scale"))
        scores = node("Mul", [scores, f"{b}.scale"], f"{b}.scaled")
        attn = node("Softmax", [scores], f"{b}.attn", axis=-1)
        out = node("MatMul", [attn, v], f"{b}.attended")                                       # [N, H, T, d]
        out = node("Transpose", [out], f"{b}.attended_t", perm=[0, 2, 1, 3])
        out = node("Reshape", [out, const(f"{b}.merge_shape", [0, TOKENS, WIDTH])], f"{b}.merged")
        out = node("MatMul", [out, weight(f"{b}.proj.w", WIDTH, WIDTH)], f"{b}.proj")
        x = node("Add", [x, out], f"{b}.res1")
        h = layer_norm(x, f"{b}.norm2")
        h = node("MatMul", [h, weight(f"{b}.fc1.w", WIDTH, 4 * WIDTH)], f"{b}.fc1")
        h = node("Relu", [h], f"{b}.act")  # LVFace: GELU; any pointwise activation keeps the structure
        h = node("MatMul", [h, weight(f"{b}.fc2.w", 4 * WIDTH, WIDTH)], f"{b}.fc2")
        x = node("Add", [x, h], f"{b}.res2")
    x = layer_norm(x, "norm")
    x = node("Reshape", [x, const("flat_shape", [0, TOKENS * WIDTH])], "flat")
    x = node("MatMul", [x, weight("feature.w", TOKENS * WIDTH, FEATURES, scale=0.02)], "feature_lin")
    inits.append(nph.from_array(np.ones((1, FEATURES), np.float32) * 0.9, "feature.bn_scale"))
    x = node("Mul", [x, "feature.bn_scale"], "feature_bn")
    nodes.append(helper.make_node("Add", [x, weight("feature.bn_shift", 1, FEATURES, scale=0.01)], ["output"],
                                  name="vit/output"))
    graph = helper.make_graph(
        nodes, "lvface_b_structure",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, INPUT, INPUT])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", FEATURES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="roundhouse-test")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def entry() -> dict:
    """models.yaml's lvface-b entry, as shipped."""
    raw = yaml.safe_load((REPO / "models.yaml").read_text())
    [found] = [m for m in raw["models"] if m["id"] == MODEL]
    return found


@pytest.fixture(scope="module")
def lvface_dir(entry: dict, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The entry's directory layout: the tiny SCRFD detector under the entry's det_model name (the real
    entry pairs buffalo_l's det_10g.onnx) and the ViT graph under its rec_model name."""
    out = tmp_path_factory.mktemp("lvface-b")
    shutil.copy(tiny_dir / "face" / "tiny-insightface" / "det_tiny.onnx", out / entry["options"]["det_model"])
    build_vit_recognizer(out / entry["options"]["rec_model"])
    return out


@pytest.fixture(scope="module")
def client(entry: dict, lvface_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    # The shipped entry on CPU, from the test directory; det_size 320 is the tiny detector's.
    spec = {**entry, "source": str(lvface_dir), "device": "cpu", "options": {**entry["options"], "det_size": 320}}
    catalog = tmp_path_factory.mktemp("lvface-catalog") / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"models": [spec]}))
    with TestClient(create_app(FaceSettings(catalog=catalog, cache_dir=tmp_path_factory.mktemp("cache")))) as c:
        yield c


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_the_entry_pins_lvface_normalisation_and_names_its_licence(entry: dict) -> None:
    assert entry["backend"] == "insightface" and entry["family"] == "face"
    assert entry["options"]["rec_mean"] == 127.5 and entry["options"]["rec_std"] == 127.5
    text = (REPO / "models.yaml").read_text()
    assert "non-commercial" in text[text.index("LVFace"):text.index(f"id: {MODEL}")]


def test_the_graph_has_lvface_b_shapes_and_vit_structure(entry: dict, lvface_dir: Path) -> None:
    import onnx

    graph = onnx.load(str(lvface_dir / entry["options"]["rec_model"])).graph
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (graph.input[0], graph.output[0])]
    assert dims == [["N", 3, 112, 112], ["N", 512]]
    ops = [n.op_type for n in graph.node]
    assert ops[0] == "Conv" and ops.count("LayerNormalization") == 2 * BLOCKS + 1 and ops.count("Softmax") == BLOCKS


def test_face_svc_loads_it_and_embeds_512_d(client: TestClient) -> None:
    r = client.post(f"/v1/models/{MODEL}/load")
    assert r.status_code == 200, r.text
    image = np.zeros((240, 320, 3), np.uint8)
    image[40:104, 56:120] = 255  # the tiny detector's face
    image[120:184, 200:264] = (255, 255, 180)
    r = client.post("/v1/faces/detect", data={"model": MODEL, "embed": "true", "crops": "true"},
                    files={"file": ("a.png", png(image), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["faces"]) == 2 and body["recognition_batch"] == 2
    vectors = [np.array(f["embedding"]) for f in body["faces"]]
    assert all(v.shape == (512,) and abs(np.linalg.norm(v) - 1) < 1e-4 for v in vectors)
    assert float(vectors[0] @ vectors[1]) < 0.999  # two different crops, two different vectors
    crops = [("file", (f"c{i}.png", base64.b64decode(f["crop"]), "image/png")) for i, f in enumerate(body["faces"])]
    r = client.post("/v1/faces/embed", data={"model": MODEL}, files=crops)
    assert r.status_code == 200, r.text
    embedded = r.json()
    assert embedded["dim"] == 512 and embedded["recognition_batch"] == 2
    for got, want in zip(embedded["data"], vectors):
        assert float(np.array(got["embedding"]) @ want) > 0.999
