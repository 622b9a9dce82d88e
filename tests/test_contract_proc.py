"""The contract between the gateway and a family service, checked by type: the peak memory the caption
service measured for a model (its ``ModelRow``, parsed) is what the gateway's ledger charges (its
``AdminGpu``, parsed), what the admin view shows, what footprints.json remembers and what the service's
``roundhouse_model_peak_memory_bytes`` exports. A renamed field fails these at parse time, not by
turning a figure into None."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.schemas import AdminGpu, AdminModels
from modelhost.contract import ModelsReply
from tests import procs
from tests.conftest import image_bytes

pytestmark = pytest.mark.proc

MODEL = "tiny-blip"


@pytest.fixture()
def fresh_stack(tiny_catalog: Path, logdir: Path, tmp_path: Path):
    """Its own gateway and caption service: no other test's loads or unloads move charges between models."""
    svc = procs.start_caption_svc(tiny_catalog, logdir)
    gw = procs.start_gateway(tiny_catalog, {"caption": svc.url}, logdir, name="gateway-contract",
                             data_dir=str(tmp_path / "data"), reconcile_interval_s="3600")
    yield gw, svc, tmp_path / "data"
    gw.stop()
    svc.stop()


def test_the_ledger_charges_the_peak_the_service_measured(fresh_stack) -> None:
    gw, svc, data_dir = fresh_stack
    r = httpx.post(gw.url + "/v1/images/captions", files={"file": ("a.png", image_bytes("PNG"))},
                   data={"model": MODEL}, timeout=180)
    assert r.status_code == 200, r.text

    served = ModelsReply.model_validate(httpx.get(svc.url + "/v1/models", headers=procs.INTERNAL_HEADERS, timeout=10).json())
    row = next(m for m in served.data if m.id == MODEL)
    assert row.state == "ready" and row.peak_memory_bytes is not None and row.peak_memory_bytes > 0

    ledger = AdminGpu.model_validate(httpx.get(gw.url + "/admin/gpu", timeout=10).json())
    assert ledger.devices["cpu"].resident[MODEL].charged_bytes == row.peak_memory_bytes
    assert ledger.devices["cpu"].footprints[MODEL].bytes == row.peak_memory_bytes
    assert ledger.devices["cpu"].footprints[MODEL].measured

    admin = AdminModels.model_validate(httpx.get(gw.url + "/admin/models", timeout=10).json())
    assert next(m for m in admin.data if m.id == MODEL).peak_memory_bytes == row.peak_memory_bytes

    remembered = json.loads((data_dir / "footprints.json").read_text())
    assert remembered[MODEL]["peak_memory_bytes"] == row.peak_memory_bytes

    metrics = httpx.get(svc.url + "/metrics", timeout=10).text
    exported = [s.value for f in text_string_to_metric_families(metrics) for s in f.samples
                if s.name == "roundhouse_model_peak_memory_bytes" and s.labels.get("model") == MODEL]
    assert exported == [row.peak_memory_bytes]
