"""Lower-precision weights for the caption models (``options.quantization``), on CPU with torchao's int8
weight-only quantisation, through the real service and its worker: the int8 model loads, captions, and its
measured memory is below the float32 model's; what the CPU cannot honour (int4) fails its load with the
reason; an unknown value refuses the catalog. The CUDA paths (bitsandbytes int8 and NF4) are the ``gpu`` test
at the end.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from caption_svc.config import CaptionSettings
from caption_svc.main import create_app
from modelhost.catalog import CatalogError

REPO = Path(__file__).resolve().parents[2]
WIDE = dict(hidden_size=768, ffn_dim=3072, num_hidden_layers=6, word_embed_proj_dim=768, num_attention_heads=8)
"""The language model of ``wide-blip2``: about 42 million weights in its linear layers (170 MB in float32,
42 MB in int8), so the saving stands well above the noise of a process's resident set."""
SAVING_AT_LEAST = 64 * 2**20
INT8_COPY_AT_MOST = 64 * 2**20


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("make_tiny_models", REPO / "tools" / "make_tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-blip and wide-blip2 (tiny-blip2's tokenizer and vision side, a wider language model), and a
    catalog of each in float32 and int8 (and tiny-blip in int4, which the CPU cannot run)."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, GenerationConfig

    out = tmp_path_factory.mktemp("precision")
    build = _builder()
    build.build_blip(out / "tiny-blip")
    wide = out / "wide-blip2"
    build.build_blip2(wide)
    config = Blip2Config.from_pretrained(wide)
    for key, value in WIDE.items():
        setattr(config.text_config, key, value)
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig.from_pretrained(wide)
    model.save_pretrained(wide)
    (out / "catalog.yaml").write_text(
        "defaults: {family: caption, device: cpu, dtype: float32, max_batch: 4, max_wait_ms: 5,"
        " options: {max_new_tokens: 6}}\n"
        "models:\n"
        "  - {id: tiny-blip, backend: blip, source: ./tiny-blip}\n"
        "  - {id: tiny-blip-int8, backend: blip, source: ./tiny-blip, options: {max_new_tokens: 6, quantization: int8}}\n"
        "  - {id: tiny-blip-int4, backend: blip, source: ./tiny-blip, options: {max_new_tokens: 6, quantization: int4}}\n"
        "  - {id: wide-blip2, backend: blip2, source: ./wide-blip2}\n"
        "  - {id: wide-blip2-int8, backend: blip2, source: ./wide-blip2, options: {max_new_tokens: 6, quantization: int8}}\n"
    )
    return out


@pytest.fixture(scope="module")
def client(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = CaptionSettings(catalog=models / "catalog.yaml", cache_dir=tmp_path_factory.mktemp("cache"))
    with TestClient(create_app(settings)) as c:
        yield c


def _png() -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((48, 40)).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def _row(client: TestClient, model: str) -> dict[str, Any]:
    [row] = [m for m in client.get("/v1/models").json()["data"] if m["id"] == model]
    return row


def _measured(client: TestClient, model: str) -> dict[str, Any]:
    """Load ``model`` alone (its worker then measures only it), caption one image, read its row, unload it."""
    r = client.post(f"/v1/models/{model}/load")
    assert r.status_code == 200, r.text
    r = client.post("/v1/captions", data={"model": model}, files={"file": ("a.png", _png(), "image/png")})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["caption"], str) and r.json()["tokens"] >= 1
    row = _row(client, model)
    r = client.post(f"/v1/models/{model}/unload")
    assert r.status_code == 200, r.text
    return row


@pytest.mark.app
def test_an_int8_model_loads_and_captions_on_cpu(client: TestClient) -> None:
    row = _measured(client, "tiny-blip-int8")
    assert row["state"] == "ready" and row["device"] == "cpu"


@pytest.mark.app
def test_int8_weights_hold_less_memory_than_float32(client: TestClient) -> None:
    float32 = _measured(client, "wide-blip2")
    int8 = _measured(client, "wide-blip2-int8")
    mib = {k: {f: round(row[f] / 2**20) for f in ("memory_bytes", "peak_memory_bytes")}
           for k, row in (("float32", float32), ("int8", int8))}
    print(f"wide-blip2 measured on cpu (MiB): {mib}")
    assert int8["memory_bytes"] <= float32["memory_bytes"] - SAVING_AT_LEAST, mib
    # On CPU the load reads the float weights (the checkpoint's pages) before their int8 copy replaces them,
    # so its peak is the float model's plus that copy at most; on CUDA bitsandbytes quantises as it loads.
    assert int8["peak_memory_bytes"] <= float32["peak_memory_bytes"] + INT8_COPY_AT_MOST, mib


@pytest.mark.app
def test_int4_on_cpu_is_unavailable_with_the_reason(client: TestClient) -> None:
    reason = "quantization int4 needs a CUDA device"
    row = _row(client, "tiny-blip-int4")
    assert row["state"] == "unavailable" and reason in (row["reason"] or ""), row
    r = client.post("/v1/models/tiny-blip-int4/load")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["src"] == "caption-svc" and body["error"]["code"] == "model_unavailable"
    assert reason in body["error"]["message"] and "use quantization int8 on cpu" in body["error"]["message"]
    # The service goes on: another model still loads.
    assert client.post("/v1/models/tiny-blip/load").status_code == 200


@pytest.mark.unit
def test_int4_that_falls_back_to_cpu_fails_its_load_with_the_reason(models: Path) -> None:
    """A CUDA model allowed to fall back runs on the CPU where no GPU is usable: its load refuses int4 there."""
    from caption_svc.backends.blip import BlipCaptioner
    from modelhost.catalog import ModelSpec

    spec = ModelSpec(id="tiny-blip-int4", family="caption", backend="blip", source=str(models / "tiny-blip"),
                     device="cuda:0", allow_cpu_fallback=True, options={"quantization": "int4"})
    backend = BlipCaptioner(spec, cache_dir=str(models / "cache"))
    with pytest.MonkeyPatch.context() as mp:
        import torch

        mp.setattr(torch.cuda, "is_available", lambda: False)  # the hardware boundary: no usable GPU
        with pytest.raises(ValueError, match="int4 needs a CUDA device .* runs on cpu: use quantization int8 on cpu"):
            backend.load()


@pytest.mark.unit
def test_an_unknown_quantization_refuses_the_catalog(models: Path, tmp_path: Path) -> None:
    shutil.copytree(models / "tiny-blip", tmp_path / "tiny-blip")
    (tmp_path / "catalog.yaml").write_text(
        "models:\n"
        "  - {id: tiny-blip-fp8, family: caption, backend: blip, source: ./tiny-blip, options: {quantization: fp8}}\n"
    )
    with pytest.raises(CatalogError) as e:
        create_app(CaptionSettings(catalog=tmp_path / "catalog.yaml", cache_dir=tmp_path / "cache"))
    message = str(e.value)
    assert "tiny-blip-fp8" in message and "quantization 'fp8' is not supported" in message
    assert "int8 or int4" in message


@pytest.mark.gpu
@pytest.mark.parametrize("bits", ["int8", "int4"])
def test_bitsandbytes_weights_load_and_caption_on_cuda(models: Path, bits: str) -> None:
    """On a GPU (tools/gpu_check, or ``pytest -m gpu``): bitsandbytes quantises the linear layers while
    loading, the model captions, and it holds less GPU memory than in float16."""
    import torch

    from caption_svc.backends.blip2 import Blip2Captioner
    from caption_svc.items import CaptionItem
    from modelhost.catalog import ModelSpec

    assert torch.cuda.is_available(), "the gpu tier needs a CUDA device"

    def allocated(options: dict[str, Any]) -> int:
        spec = ModelSpec(id=f"wide-blip2-{bits}", family="caption", backend="blip2", source=str(models / "wide-blip2"),
                         device="cuda:0", dtype="float16", options={"max_new_tokens": 6, **options})
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        backend = Blip2Captioner(spec, cache_dir=str(models / "cache"))
        assert backend.load() == "cuda:0"
        backend.warmup()
        [result] = backend.infer([CaptionItem(image=Image.linear_gradient("L").convert("RGB"))])
        assert isinstance(result["caption"], str) and result["tokens"] >= 1
        held = torch.cuda.memory_allocated() - before
        backend.close()
        return held

    half = allocated({})
    quantised = allocated({"quantization": bits})
    print(f"wide-blip2 on cuda: float16 {half / 2**20:.0f} MiB, {bits} {quantised / 2**20:.0f} MiB")
    assert quantised < half
