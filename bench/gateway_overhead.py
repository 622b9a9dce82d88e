"""What the gateway's hop costs: the gateway versus calling the service directly and versus nginx
doing the same hop, all in one run on loopback.

    .venvs/gateway/bin/python bench/gateway_overhead.py [--requests 2000] [--duration 8]

The upstream is tests/doubles/echo_service.py (the model host API with a canned caption), twice:
one that answers at once ("trivial") and one that sleeps 20 ms per request ("slow"). In front of
each: a real gateway process (its real catalog, its real POST /v1/images/captions route: JSON parse,
base64 decode, image header check, multipart forward over modelhost.http1) and nginx (one worker, a
keep-alive upstream pool, access log off) proxying the same path to the double.

The request is POST /v1/images/captions with {"image": "<base64 of an 8x8 PNG>", "model":
"bench-caption"} (155 bytes). "direct" sends the same request to the double.

Measured:
  * sequential latency (one keep-alive connection per path, the paths interleaved request by
    request so drift hits all alike): p50/p99 per path; added = path - direct;
  * throughput with wrk (2 threads, 16 connections) against each path of each upstream, and the CPU
    time the proxy process spent per request.

Targets (reported, never asserted; the script exits 0 with MISS printed): added p50 <= 1.5 ms,
added p99 <= 3 ms, gateway >= 0.5 x nginx's throughput on the trivial upstream, gateway >= 95 % of
direct throughput on the 20 ms upstream.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import (GATEWAY_PY, ROOT, Processes, cpu_ticks, free_port, group_cpu_s, machine,
                     percentile, steal_pct, tiny_png, wait_ready)

MODEL = "bench-caption"
PATH = "/v1/images/captions"
SLOW_DELAY_MS = 20.0

TARGET_ADDED_P50_MS = 1.5
TARGET_ADDED_P99_MS = 3.0
TARGET_TRIVIAL_VS_NGINX = 0.5
TARGET_SLOW_VS_DIRECT = 0.95

CATALOG = f"""# written by bench/gateway_overhead.py: one caption model served by the echo double
models:
  - id: {MODEL}
    family: caption
    backend: blip
    source: ./x
"""

NGINX_CONF = """worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    upstream trivial {{ server 127.0.0.1:{trivial}; keepalive 64; keepalive_requests 1000000; }}
    upstream slow {{ server 127.0.0.1:{slow}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{nginx_trivial};
        location / {{ proxy_pass http://trivial; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
    server {{
        listen 127.0.0.1:{nginx_slow};
        location / {{ proxy_pass http://slow; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
}}
"""

# wrk's body comes from a file (the JSON is not a Lua literal); ``done`` prints one JSON line.
WRK_LUA = """local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"status":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Target:
    label: str  # direct, nginx, gateway
    upstream: str  # trivial, slow
    port: int
    proc: str  # the process whose CPU time is the hop's cost ("" for direct: the double itself)


class Connection:
    """One keep-alive HTTP/1.1 connection with a fixed request; reads Content-Length framed answers.
    Leaner than http.client, so the client's own cost stays small next to what it measures."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port = port
        self.request = request
        self.reconnects = 0
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def roundtrip(self) -> tuple[int, bytes]:
        self.sock.sendall(self.request)
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buf += chunk
        head = buf[:end].decode("latin-1")
        status = int(head[9:12])
        m = re.search(r"(?im)^content-length:\s*(\d+)", head)
        if m is None:
            raise ConnectionError(f"an answer without Content-Length: {head!r}")
        need = end + 4 + int(m.group(1))
        while len(buf) < need:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection mid-body")
            buf += chunk
        self.buf = buf[need:]
        if re.search(r"(?im)^connection:\s*close", head):  # the server ends keep-alive: reconnect now
            self.sock.close()
            self._connect()
            self.reconnects += 1
        return status, buf[end + 4:need]

    def close(self) -> None:
        self.sock.close()


def build_request(body: bytes) -> bytes:
    return (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def sequential_latency(targets: list[Target], request: bytes, *, n: int, warmup: int) -> dict[str, list[float]]:
    """Interleaved: request i goes to every path in turn, so slow spells of the shared CPUs hit all."""
    conns = {t.label: Connection(t.port, request) for t in targets}
    try:
        for _ in range(warmup):
            for t in targets:
                status, body = conns[t.label].roundtrip()
                if status != 200 or b'"image.caption"' not in body:
                    raise RuntimeError(f"{t.label} answered {status}: {body[:300]!r}")
        times: dict[str, list[float]] = {t.label: [] for t in targets}
        clock = time.perf_counter
        for _ in range(n):
            for t in targets:
                c = conns[t.label]
                t0 = clock()
                try:
                    status, _ = c.roundtrip()
                except OSError as e:
                    raise RuntimeError(f"{t.label} (port {t.port}) failed after {len(times[t.label])} requests: {e!r}") from e
                times[t.label].append((clock() - t0) * 1000.0)
                if status != 200:
                    raise RuntimeError(f"{t.label} answered {status} during the measurement")
        return {k: sorted(v) for k, v in times.items()}
    finally:
        for c in conns.values():
            c.close()


def run_wrk(port: int, lua: Path, *, duration_s: float, connections: int, threads: int) -> dict:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", "--timeout", "5s", "-s", str(lua),
            f"http://127.0.0.1:{port}{PATH}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=True).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    r = json.loads(line[len("WRKJSON "):])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = r["status"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
    return r


def most_in_flight(port: int) -> int:
    """The most inference requests the echo double held at once since the last call (which resets it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/stats")
        return int(json.loads(conn.getresponse().read())["most_in_flight"])
    finally:
        conn.close()


def combine(runs: list[dict]) -> dict:
    """Rounds of one path: requests and CPU summed, throughput over the summed time, latency
    percentiles as the median of the rounds' (wrk reports no histogram to merge)."""
    requests = sum(r["requests"] for r in runs)
    seconds = sum(r["duration_us"] for r in runs) / 1e6
    return {
        "requests": requests, "rps": requests / seconds, "errors": sum(r["errors"] for r in runs),
        "rps_rounds": [r["rps"] for r in runs],
        "p50_us": statistics.median(r["p50_us"] for r in runs), "p99_us": statistics.median(r["p99_us"] for r in runs),
        "cpu": {n: sum(r["cpu"][n] for r in runs) for n in runs[0]["cpu"]},
        "in_flight": max(r["in_flight"] for r in runs),
        "steal": max(r["steal"] for r in runs),
    }


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per path (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=9.0,
                        help="measured wrk seconds per path, split over the rounds (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="wrk rounds over all paths (default: %(default)s)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default: %(default)s)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with every log")
    args = parser.parse_args(argv)
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"ERROR: {tool} is not installed (apt-get install -y nginx wrk)", file=sys.stderr)
            return 2
    nginx = shutil.which("nginx")

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="rh-bench-overhead-"))
    body = json.dumps({"image": base64.b64encode(tiny_png(8)).decode(), "model": MODEL}).encode()
    (tmp / "body.json").write_bytes(body)
    lua = tmp / "post.lua"
    lua.write_text(WRK_LUA.format(body=tmp / "body.json"))
    catalog = tmp / "catalog.yaml"
    catalog.write_text(CATALOG)
    ports = {k: free_port() for k in ("echo_trivial", "echo_slow", "gw_trivial", "gw_slow", "ng_trivial", "ng_slow")}
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(
        tmp=tmp, trivial=ports["echo_trivial"], slow=ports["echo_slow"],
        nginx_trivial=ports["ng_trivial"], nginx_slow=ports["ng_slow"]))
    echo = ROOT / "tests" / "doubles" / "echo_service.py"

    print(f"gateway overhead benchmark, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {machine()}")
    print(f"load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          "(other work on the machine skews every figure)")
    print(f"request: POST {PATH}, {len(body)}-byte JSON body (base64 of an 8x8 PNG), model {MODEL}")
    try:
        with Processes(tmp) as procs:
            for kind, delay in (("trivial", 0.0), ("slow", SLOW_DELAY_MS)):
                procs.start(f"echo-{kind}", [GATEWAY_PY, echo, "--port", ports[f"echo_{kind}"], "--delay-ms", delay,
                                             "--model", MODEL])
            for kind in ("trivial", "slow"):
                procs.start(f"gateway-{kind}", [GATEWAY_PY, "-m", "gateway"], env={
                    "GATEWAY_CATALOG": str(catalog), "GATEWAY_PORT": str(ports[f"gw_{kind}"]),
                    "GATEWAY_SERVICES": json.dumps({"caption": f"http://127.0.0.1:{ports[f'echo_{kind}']}"}),
                    "GATEWAY_API_KEYS": "[]", "GATEWAY_DATA_DIR": str(tmp / f"data-{kind}")})
            procs.start("nginx", [nginx, "-p", tmp, "-e", tmp / "nginx-error.log", "-c", tmp / "nginx.conf",
                                  "-g", "daemon off;"])
            for kind in ("trivial", "slow"):
                wait_ready(procs, f"echo-{kind}", ports[f"echo_{kind}"], "/health/ready")
                wait_ready(procs, f"gateway-{kind}", ports[f"gw_{kind}"], "/health/ready")
                wait_ready(procs, "nginx", ports[f"ng_{kind}"], "/health/ready")
            pgid = {name: procs.pid(name) for name in ("echo-trivial", "echo-slow", "gateway-trivial",
                                                        "gateway-slow", "nginx")}
            targets = {kind: [Target("direct", kind, ports[f"echo_{kind}"], f"echo-{kind}"),
                              Target("nginx", kind, ports[f"ng_{kind}"], "nginx"),
                              Target("gateway", kind, ports[f"gw_{kind}"], f"gateway-{kind}")]
                       for kind in ("trivial", "slow")}

            # 1. Sequential latency on the trivial upstream.
            request = build_request(body)
            lat = sequential_latency(targets["trivial"], request, n=args.requests, warmup=200)
            sequential_latency(targets["slow"], request, n=0, warmup=5)  # loads the model behind gateway-slow
            direct = lat["direct"]
            print()
            print(f"Sequential latency, trivial upstream, {args.requests} requests per path, one keep-alive "
                  "connection, paths interleaved (ms)")
            print(f"{'path':<9}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}{'added p50':>11}{'added p99':>11}")
            added: dict[str, tuple[float, float]] = {}
            for label, vals in lat.items():
                a50 = percentile(vals, 50) - percentile(direct, 50)
                a99 = percentile(vals, 99) - percentile(direct, 99)
                added[label] = (a50, a99)
                extra = ("" if label == "direct" else f"{a50:>11.3f}{a99:>11.3f}")
                print(f"{label:<9}{percentile(vals, 50):>8.3f}{percentile(vals, 90):>8.3f}"
                      f"{percentile(vals, 99):>8.3f}{vals[-1]:>8.3f}{extra}")

            # 2. Throughput with wrk: a warm-up per path, then rounds that visit every path in turn, so a
            #    slow spell of the shared CPUs falls on all paths rather than on whichever ran then.
            for kind in ("trivial", "slow"):
                for t in targets[kind]:
                    run_wrk(t.port, lua, duration_s=2, connections=args.connections, threads=args.threads)
            runs: dict[tuple[str, str], list[dict]] = {}
            for _ in range(args.rounds):
                for kind in ("trivial", "slow"):
                    for t in targets[kind]:
                        procs.check_alive()
                        echo_port = ports[f"echo_{kind}"]
                        most_in_flight(echo_port)  # resets the double's count
                        cpu0 = {n: group_cpu_s(p) for n, p in pgid.items()}
                        ticks0 = cpu_ticks()
                        r = run_wrk(t.port, lua, duration_s=args.duration / args.rounds, connections=args.connections,
                                    threads=args.threads)
                        r["steal"] = steal_pct(ticks0, cpu_ticks())
                        cpu1 = {n: group_cpu_s(p) for n, p in pgid.items()}
                        r["cpu"] = {n: cpu1[n] - cpu0[n] for n in pgid}
                        r["in_flight"] = most_in_flight(echo_port)
                        runs.setdefault((kind, t.label), []).append(r)
            results = {key: combine(rs) for key, rs in runs.items()}
            print()
            print(f"Throughput, wrk -t{args.threads} -c{args.connections}, {args.rounds} rounds of "
                  f"{args.duration / args.rounds:g} s per path (CPU: ms of CPU per request in the proxy process / "
                  "in the upstream double; p50/p99: median of the rounds; upstream: the most requests the 20 ms "
                  "double held at once; steal: the most CPU time, in a round, the hypervisor gave other guests)")
            print(f"{'upstream':<13}{'path':<9}{'req/s':>9}{'vs direct':>11}{'vs nginx':>10}{'p50 ms':>9}{'p99 ms':>9}"
                  f"{'errors':>8}{'proxy CPU':>11}{'upstream CPU':>14}{'upstream':>10}{'steal':>7}  req/s per round")
            for kind in ("trivial", "slow"):
                d = results[(kind, "direct")]["rps"]
                ng = results[(kind, "nginx")]["rps"]
                for t in targets[kind]:
                    r = results[(kind, t.label)]
                    n = max(r["requests"], 1)
                    proxy_cpu = "" if t.label == "direct" else f"{r['cpu'][t.proc] * 1000 / n:.3f}"
                    up_cpu = f"{r['cpu'][f'echo-{kind}'] * 1000 / n:.3f}"
                    upstream = f"{kind} {SLOW_DELAY_MS:g} ms" if kind == "slow" else kind
                    held = str(r["in_flight"]) if kind == "slow" else ""
                    print(f"{upstream:<13}{t.label:<9}{r['rps']:>9.0f}{r['rps'] / d:>11.2f}{r['rps'] / ng:>10.2f}"
                          f"{r['p50_us'] / 1000:>9.2f}{r['p99_us'] / 1000:>9.2f}{r['errors']:>8}{proxy_cpu:>11}{up_cpu:>14}{held:>10}"
                          f"{r['steal']:>6.1f}%  "
                          + " ".join(f"{x:.0f}" for x in r["rps_rounds"]))
            errors = sum(r["errors"] for r in results.values())
    finally:
        if args.keep_logs:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    a50, a99 = added["gateway"]
    trivial_vs_nginx = results[("trivial", "gateway")]["rps"] / results[("trivial", "nginx")]["rps"]
    slow_vs_direct = results[("slow", "gateway")]["rps"] / results[("slow", "direct")]["rps"]
    # CPU per request of the proxy process on the trivial upstream: the figure other load on the machine moves least.
    gw, ng = results[("trivial", "gateway")], results[("trivial", "nginx")]
    gw_cpu_ms = gw["cpu"]["gateway-trivial"] * 1000 / max(gw["requests"], 1)
    ng_cpu_ms = ng["cpu"]["nginx"] * 1000 / max(ng["requests"], 1)
    print()
    if errors:
        print(f"WARNING: wrk counted {errors} errors (non-2xx answers, socket errors or timeouts) across the runs")
    print(f"nginx, for reference: added p50 {added['nginx'][0]:.3f} ms, p99 {added['nginx'][1]:.3f} ms; "
          f"whole run {time.monotonic() - started:.0f} s; load average after the run: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"gateway_added_p50_ms={a50:.3f} {mark(a50 <= TARGET_ADDED_P50_MS)}(<={TARGET_ADDED_P50_MS:g}) "
          f"gateway_added_p99_ms={a99:.3f} {mark(a99 <= TARGET_ADDED_P99_MS)}(<={TARGET_ADDED_P99_MS:g}) "
          f"trivial_vs_nginx={trivial_vs_nginx:.2f} {mark(trivial_vs_nginx >= TARGET_TRIVIAL_VS_NGINX)}"
          f"(>={TARGET_TRIVIAL_VS_NGINX:g}) "
          f"slow_vs_direct={slow_vs_direct:.3f} {mark(slow_vs_direct >= TARGET_SLOW_VS_DIRECT)}"
          f"(>={TARGET_SLOW_VS_DIRECT:g}) "
          f"gateway_cpu_ms_per_req={gw_cpu_ms:.3f} nginx_cpu_ms_per_req={ng_cpu_ms:.3f} "
          f"slow_steal_pct={max(results[('slow', t)]['steal'] for t in ('direct', 'gateway')):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
