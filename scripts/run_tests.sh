#!/usr/bin/env bash
# Runs every test tier in the environment it belongs to and prints one closing line for all of
# them. Exits non-zero if any run failed (or collected nothing).
set -uo pipefail
cd "$(dirname "$0")/.."
GW_PY=${GW_PY:-.venvs/gateway/bin/python}
CAP_PY=${CAP_PY:-.venvs/caption-svc/bin/python}
FACE_PY=${FACE_PY:-.venvs/face-svc/bin/python}
TTS_PY=${TTS_PY:-.venvs/tts-svc/bin/python}
ASR_PY=${ASR_PY:-.venvs/asr-svc/bin/python}
MARKERS=${MARKERS:-"not compose and not gpu"}
out=build/test-results
rm -rf "$out" && mkdir -p "$out"
status=0

run() {  # name python paths...
  local name=$1 py=$2; shift 2
  echo "=== $name: $py -m pytest $* -m '$MARKERS'"
  "$py" -m pytest "$@" -m "$MARKERS" --junitxml="$out/$name.xml" -q || status=1
}

run gateway "$GW_PY" modelhost/tests gateway/tests tests
run caption-svc "$CAP_PY" caption-svc/tests
run face-svc "$FACE_PY" face-svc/tests
run tts-svc "$TTS_PY" tts-svc/tests
run asr-svc "$ASR_PY" asr-svc/tests

# promtool: the Prometheus config, rules and rule unit tests (monitoring/); one junit file beside the others.
scripts/check_monitoring.sh "$out" || status=1

"$GW_PY" tools/test_summary.py "$out"/*.xml || status=1
exit $status
