"""Helpers for the monitoring tests: the dashboards and their queries as Grafana would send them, and
a real Prometheus server (Debian's binary) started on loopback with its own TSDB directory."""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from tests import procs

ROOT = procs.ROOT
MONITORING = ROOT / "monitoring"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources"
PROMETHEUS_YML = MONITORING / "prometheus" / "prometheus.yml"

# What Grafana substitutes for its built-in interval variables; label variables become the regex
# their "All" option sends (allValue ".*").
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "10m"}
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def provisioned_datasource() -> dict[str, Any]:
    (path,) = sorted(DATASOURCES.glob("*.yml"))
    (ds,) = yaml.safe_load(path.read_text())["datasources"]
    return ds


def dashboards() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, json.loads(p.read_text())) for p in sorted(DASHBOARDS.glob("*.json"))]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data, rows' nested panels included (rows themselves hold no query)."""
    for p in dashboard["panels"]:
        if p["type"] == "row":
            yield from p.get("panels", [])
        else:
            yield p


@dataclass(frozen=True)
class Query:
    dashboard: str
    where: str  # "panel 'Title' A" or "variable model"
    expr: str  # as written in the dashboard

    def promql(self) -> str:
        """The query as Grafana sends it with every label variable at "All"."""
        return substitute(self.expr)


def substitute(expr: str) -> str:
    return _VAR.sub(lambda m: BUILTINS.get(m.group(1) or m.group(2), ".*"), expr)


def variable_query(q: Any) -> str:
    return q["query"] if isinstance(q, dict) else q


def label_values_selector(query: str) -> str:
    """``label_values(<selector>, label)`` (Grafana's variable function) -> the selector it reads."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.S)
    assert m, f"not a label_values() query: {query!r}"
    return m.group(1)


def queries(name: str, dashboard: dict[str, Any]) -> list[Query]:
    out = [Query(name, f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in panels(dashboard) for t in p["targets"]]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            out.append(Query(name, f"variable {v['name']}", label_values_selector(variable_query(v["query"]))))
    return out


def all_queries() -> list[Query]:
    return [q for name, d in dashboards() for q in queries(name, d)]


# A real Prometheus ------------------------------------------------------------------------------


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    assert path, "the prometheus server is not installed: apt-get install -y prometheus (.ci/run does)"
    return path


def start_prometheus(config: dict[str, Any], workdir: Path, logdir: Path, name: str = "prometheus",
                     port: int | None = None) -> procs.Proc:
    """Prometheus with ``config`` on loopback (a free port unless given), its TSDB under ``workdir``."""
    port = port or procs.free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [prometheus_binary(), f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    return procs.start(name, argv, {}, port, logdir, ready_path="/-/ready", timeout_s=30)


def query(base_url: str, promql: str) -> tuple[int, dict[str, Any]]:
    """``GET /api/v1/query``: (HTTP status, body). A parse error is 400 with errorType bad_data."""
    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)
