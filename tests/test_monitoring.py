"""The Grafana side of monitoring/ as files: the datasource is provisioned under a fixed uid, every
panel of every dashboard names it, the variables are the ones the queries use, and every query
parses in a real Prometheus (a parse error comes back as 400 bad_data). Whether the queries return
data from a running stack: test_monitoring_proc.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests import monitoring_fixtures as mf
from tests import procs

UID = "roundhouse-prometheus"
DASHBOARD_NAMES = ["roundhouse-models.json", "roundhouse-overview.json"]


@pytest.mark.unit
def test_the_datasource_is_provisioned_with_a_fixed_uid_at_the_compose_prometheus() -> None:
    ds = mf.provisioned_datasource()
    assert ds["uid"] == UID
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090" and ds["isDefault"] is True


@pytest.mark.unit
def test_the_dashboards_provider_reads_the_directory_compose_mounts_the_dashboards_at() -> None:
    (provider,) = yaml.safe_load((mf.MONITORING / "grafana/provisioning/dashboards/roundhouse.yml").read_text())["providers"]
    compose = yaml.safe_load((mf.ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    assert mounts[provider["options"]["path"]] == "./monitoring/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./monitoring/grafana/provisioning"
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home is None or (mf.DASHBOARDS / Path(home).relative_to(provider["options"]["path"])).is_file()


@pytest.mark.unit
def test_there_is_an_overview_and_a_models_dashboard_with_unique_uids() -> None:
    found = mf.dashboards()
    assert [name for name, _ in found] == DASHBOARD_NAMES
    uids = [d["uid"] for _, d in found]
    assert sorted(uids) == ["roundhouse-models", "roundhouse-overview"]


@pytest.mark.unit
@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_every_panel_and_query_names_the_provisioned_datasource(name: str) -> None:
    dashboard = dict(mf.dashboards())[name]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds_var = variables["datasource"]
    assert ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
    assert ds_var["current"]["value"] == UID  # the variable's default is the provisioned datasource

    def resolve(ref: dict) -> str:
        assert ref["type"] == "prometheus", ref
        return ds_var["current"]["value"] if ref["uid"] in ("${datasource}", "$datasource") else ref["uid"]

    data_panels = list(mf.panels(dashboard))
    assert data_panels
    for p in data_panels:
        assert resolve(p["datasource"]) == UID, p["title"]
        assert p["targets"], f"{p['title']} has no query"
        for t in p["targets"]:
            assert resolve(t["datasource"]) == UID, (p["title"], t["refId"])
    for v in variables.values():
        if v["type"] == "query":
            assert resolve(v["datasource"]) == UID, v["name"]


@pytest.mark.unit
@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_label_variables_exist_for_what_the_queries_filter_on_and_are_matched_as_regexes(name: str) -> None:
    dashboard = dict(mf.dashboards())[name]
    label_vars = {v["name"]: v for v in dashboard["templating"]["list"] if v["type"] == "query"}
    assert {"family", "model"} <= set(label_vars)
    for v in label_vars.values():
        assert v["includeAll"] and v["allValue"] == ".*" and v["multi"], v["name"]
    used = set()
    for q in mf.queries(name, dashboard):
        for var in re.findall(r"\$\{?(\w+)", q.expr):
            if var.startswith("__"):
                continue
            assert var in label_vars, f"{q.where} uses ${var}, which is not a variable"
            # Multi-value and "All" (.*) only work with a regex matcher.
            assert re.search(rf'=~"\${var}"', q.expr), f"{q.where}: ${var} must be matched with =~"
            used.add(var)
    assert used == set(label_vars), f"variables no query uses: {set(label_vars) - used}"


@pytest.mark.unit
@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_panels_have_unique_ids_and_do_not_overlap(name: str) -> None:
    dashboard = dict(mf.dashboards())[name]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


@pytest.fixture(scope="module")
def empty_prometheus(tmp_path_factory: pytest.TempPathFactory, logdir: Path):
    p = mf.start_prometheus({"global": {"scrape_interval": "15s"}, "scrape_configs": []},
                            tmp_path_factory.mktemp("prometheus-parse"), logdir, name="prometheus-parse")
    yield p
    p.stop()


@pytest.mark.proc
def test_every_dashboard_query_parses_in_a_real_prometheus(empty_prometheus: procs.Proc) -> None:
    bad = []
    qs = mf.all_queries()
    assert len(qs) > 30
    for q in qs:
        status, body = mf.query(empty_prometheus.url, q.promql())
        if status != 200 or body.get("status") != "success":
            bad.append(f"{q.dashboard} {q.where}: {status} {body.get('errorType')}: {body.get('error')}\n    {q.promql()}")
    assert not bad, "queries Prometheus refuses:\n" + "\n".join(bad)


@pytest.mark.proc
def test_the_parse_check_refuses_a_broken_query(empty_prometheus: procs.Proc) -> None:
    status, body = mf.query(empty_prometheus.url, mf.substitute('sum by (model) (rate(x{model=~"$model"}[$__rate_interval])'))
    assert status == 400 and body["errorType"] == "bad_data"
