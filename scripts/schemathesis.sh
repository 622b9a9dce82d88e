#!/usr/bin/env bash
# The gateway's OpenAPI document tested against the stack `make dev` runs. scripts/dev.sh starts the
# gateway and the four family services (here on free ports, with a fresh state folder and without its
# sample requests); once it says the stack is ready, schemathesis sends generated requests to every
# operation of /openapi.json and applies every check: no 5xx, every status and content type documented,
# every response on its schema, bad input rejected, good input accepted. Then the stack stops.
#
# Bounded: at most SCHEMATHESIS_MAX_EXAMPLES cases per operation and phase, and the whole run inside
# SCHEMATHESIS_MAX_TIME_S (fuzzing repeats until that budget is spent; a request under way when it
# runs out may add up to its SCHEMATHESIS_REQUEST_TIMEOUT_S); a hard `timeout` behind both.
# Writes a JUnit report beside the pytest results (OUT, default build/test-results/schemathesis.xml),
# so tools/test_summary.py counts it. Exits non-zero on any failure.
#
#   scripts/schemathesis.sh [OUT_DIR]     # make test runs it (scripts/run_tests.sh)
#
# When GATEWAY_API_KEYS is set, the gateway inherits it and schemathesis sends the first key.
# SCHEMATHESIS_SEED=<the seed a run printed> draws that run's cases again.
set -uo pipefail
cd "$(dirname "$0")/.."
GW_PY=${GW_PY:-.venvs/gateway/bin/python}
ST=$(cd "$(dirname "$GW_PY")" && pwd)/st
out=${1:-build/test-results}
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-20}
MAX_TIME_S=${SCHEMATHESIS_MAX_TIME_S:-120}
READY_TIMEOUT_S=${SCHEMATHESIS_READY_TIMEOUT_S:-300}
# Per request. Also the limit of the max_response_time check (its own default is 10 s): a model load
# through POST /admin/models/{id}/load takes about 20 s on 2 busy CPU cores, and is meant to.
REQUEST_TIMEOUT_S=${SCHEMATHESIS_REQUEST_TIMEOUT_S:-60}

if [ ! -x "$ST" ]; then
  echo "schemathesis is not installed in $(dirname "$GW_PY") (it comes with gateway[test]: make venvs)" >&2
  exit 1
fi
mkdir -p "$out" build/logs build/schemathesis
out=$(cd "$out" && pwd)
rm -f "$out/schemathesis.xml"
state=$(mktemp -d "${TMPDIR:-/tmp}/roundhouse-schemathesis.XXXXXX")
log=build/logs/schemathesis-stack.log
read -r GATEWAY_PORT CAPTION_PORT FACE_PORT TTS_PORT ASR_PORT < <("$GW_PY" -c "
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(('127.0.0.1', 0))
print(*(s.getsockname()[1] for s in socks))")
export GATEWAY_PORT CAPTION_PORT FACE_PORT TTS_PORT ASR_PORT
base=http://127.0.0.1:$GATEWAY_PORT

# The stack in its own process group, so that whatever happens, one signal reaches every process. The
# catalog is make dev's default, the tiny models (make tiny-models).
CATALOG=build/tiny-models/catalog.yaml DEV_SAMPLES=0 DEV_READY_FILE=$state/ready GATEWAY_DATA_DIR=$state/gateway-data \
  setsid scripts/dev.sh >"$log" 2>&1 &
dev=$!
stop_stack() {
  trap - EXIT INT TERM
  if kill -0 "$dev" 2>/dev/null; then
    kill -TERM "$dev" 2>/dev/null  # dev.sh's own trap stops the services and the gateway, and waits
    for _ in $(seq 150); do kill -0 "$dev" 2>/dev/null || break; sleep 0.2; done
  fi
  kill -KILL -- "-$dev" 2>/dev/null || true  # anything still alive in the group after 30 s
  rm -rf "$state"
}
trap stop_stack EXIT INT TERM

echo "=== schemathesis: starting the make dev stack (scripts/dev.sh, log $log)"
t0=$SECONDS
until [ -f "$state/ready" ]; do
  if ! kill -0 "$dev" 2>/dev/null; then
    echo "scripts/dev.sh exited before the stack was ready; the end of $log:" >&2
    tail -40 "$log" >&2
    exit 1
  fi
  if [ $((SECONDS - t0)) -ge "$READY_TIMEOUT_S" ]; then
    echo "the stack was not ready after $READY_TIMEOUT_S s; the end of $log:" >&2
    tail -40 "$log" >&2
    exit 1
  fi
  sleep 0.2
done
echo "=== schemathesis: stack ready in $((SECONDS - t0)) s; testing $base/openapi.json (every check," \
     "max $MAX_EXAMPLES examples per operation, $MAX_TIME_S s budget)"

auth=()
if [ -n "${GATEWAY_API_KEYS:-}" ]; then
  key=$("$GW_PY" -c 'import json, os; print(json.loads(os.environ["GATEWAY_API_KEYS"])[0])')
  auth=(--header "Authorization: Bearer $key")
fi

# Every operation is tested; none is excluded. An SSE stream (GET /v1/jobs/{job_id}/events) of a job
# that stays open ends at the request timeout, which is all it costs. --generation-database none: no
# .hypothesis/ folder in the tree, and each run draws afresh (the seed it prints reproduces one).
# One worker: the stack shares the machine's cores anyway, and with two, hypothesis (6.170 on Python
# 3.11) failed an operation with "AST constructor recursion depth mismatch", an error of its own.
# st keeps the cases it failed in .schemathesis/ under its working folder: build/schemathesis, not the tree.
# Each failure above comes with the curl command that reproduces it.
t1=$SECONDS
cfg=$(pwd)/scripts/schemathesis.toml  # where a schema cannot say what a route rightly refuses (read it)
# scripts/schemathesis_hooks.py: a multipart form's text fields re-read as sent when a file rides along.
export SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH=$(pwd)/scripts${PYTHONPATH:+:$PYTHONPATH}
seed=()
if [ -n "${SCHEMATHESIS_SEED:-}" ]; then seed=(--seed "$SCHEMATHESIS_SEED"); fi  # replays a run's draw
(cd build/schemathesis && exec timeout --kill-after=10 $((MAX_TIME_S + REQUEST_TIMEOUT_S + 30)) "$ST" --config-file "$cfg" run "$base/openapi.json" \
  --checks all \
  --max-examples "$MAX_EXAMPLES" \
  --max-time "$MAX_TIME_S" \
  --request-timeout "$REQUEST_TIMEOUT_S" \
  --max-response-time "$REQUEST_TIMEOUT_S" \
  --workers 1 \
  --generation-database none \
  --report junit --report-junit-path "$out/schemathesis.xml" \
  --no-color \
  ${seed[@]+"${seed[@]}"} ${auth[@]+"${auth[@]}"})
status=$?
echo "=== schemathesis: exit $status after $((SECONDS - t1)) s of testing ($((SECONDS - t0)) s with the stack's start)"
if [ "$status" -ne 0 ] && [ ! -s "$out/schemathesis.xml" ]; then
  # Killed by the timeout, or unable to start: still leave one failed case for the summary line.
  cat >"$out/schemathesis.xml" <<EOF
<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="schemathesis" tests="1" failures="1" errors="0" skipped="0">
<testcase name="schemathesis run"><failure message="st run exited $status without a report (see the log above)"/></testcase>
</testsuite></testsuites>
EOF
fi
exit "$status"
