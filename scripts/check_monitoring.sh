#!/usr/bin/env bash
# Checks the Prometheus side of monitoring/ with the real promtool (Debian: apt-get install prometheus):
# the config (and the rule files it names) loads, the rules are valid, and every rule's unit test
# passes (each alert silent, then firing). The dashboards are checked by tests/test_monitoring*.py.
#
#   scripts/check_monitoring.sh [JUNIT_DIR]   # with a directory: also writes JUNIT_DIR/monitoring.xml
set -uo pipefail
cd "$(dirname "$0")/.."
PROMTOOL=${PROMTOOL:-promtool}
dir=monitoring/prometheus
junit_dir=${1:-}

if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
  echo "check_monitoring: $PROMTOOL not found (apt-get install -y prometheus)" >&2
  exit 1
fi

names=() codes=() logs=()
check() {  # name command...
  local name=$1; shift
  local log
  log=$("$@" 2>&1)
  local rc=$?
  names+=("$name") codes+=("$rc") logs+=("$log")
  if [ "$rc" -eq 0 ]; then echo "ok   $name"; else echo "FAIL $name"; echo "$log" | sed 's/^/     /'; fi
}

check "promtool check config" "$PROMTOOL" check config "$dir/prometheus.yml"
check "promtool check rules" "$PROMTOOL" check rules "$dir"/rules/*.yml
check "promtool test rules" "$PROMTOOL" test rules "$dir"/tests/*.yml

status=0
for rc in "${codes[@]}"; do [ "$rc" -eq 0 ] || status=1; done

if [ -n "$junit_dir" ]; then
  mkdir -p "$junit_dir"
  # One <testcase> per check, so tools/test_summary.py counts them with the pytest runs.
  printf '%s\0' "${names[@]}" "${codes[@]}" "${logs[@]}" | python3 -c '
import sys, xml.etree.ElementTree as ET
parts = sys.stdin.buffer.read().decode().split("\0")[:-1]
n = len(parts) // 3
names, codes, logs = parts[:n], parts[n:2 * n], parts[2 * n:]
suite = ET.Element("testsuite", name="monitoring", tests=str(n), failures=str(sum(c != "0" for c in codes)),
                   errors="0", skipped="0")
for name, code, log in zip(names, codes, logs):
    case = ET.SubElement(suite, "testcase", classname="monitoring.promtool", name=name)
    if code != "0":
        ET.SubElement(case, "failure", message=f"exit status {code}").text = log
ET.ElementTree(suite).write(sys.argv[1], encoding="unicode")
' "$junit_dir/monitoring.xml"
fi
exit $status
