#!/usr/bin/env bash
# One step of `make venvs` / `make tiny-models`, with its output in a log and one line on the terminal.
#
#   scripts/step.sh GROUP NAME LABEL COMMAND [ARG...]   run COMMAND, its output appended to the log;
#                                                       prints "[GROUP] NAME: LABEL done in N s"
#   scripts/step.sh --begin GROUP NAME                  start NAME's log afresh (and its clock)
#   scripts/step.sh --end GROUP NAME [TEXT]             "[GROUP] NAME: ready in N s TEXT"
#
# The log is build/logs/<group without its s>-<name>.log (venv-asr-svc.log, tiny-model-asr.log), or under
# $STEP_LOGS. Steps of different environments run side by side (make -j), so each prints whole lines only:
# on a terminal one as the step starts, and everywhere one when it ends. A step that fails prints its
# name, its exit status and the last 40 lines of its log, and exits with the command's status.
# With STEP_LOCK=FILE the command runs holding that lock (flock), and the line says how long it waited.
set -uo pipefail

logs=${STEP_LOGS:-build/logs}
mode=run
case "${1:-}" in --begin | --end) mode=${1#--}; shift ;; esac
group=$1 name=$2
log="$logs/${group%s}-$name.log"
mkdir -p "$logs"

case $mode in
begin)
  echo "# $(date +%s) $group $name, started $(date '+%F %T')" >"$log"
  exit 0
  ;;
end)
  start=$(head -1 "$log" 2>/dev/null | awk '$1 == "#" {print $2}')
  echo "[$group] $name: ready in $(($(date +%s) - ${start:-$(date +%s)})) s${3:+ $3}"
  exit 0
  ;;
esac

label=$3
shift 3
[ -t 1 ] && echo "[$group] $name: $label ..."
{ echo; echo "## $(date '+%T') $label"; echo "\$ $*"; } >>"$log"
waited=
if [ -n "${STEP_LOCK:-}" ]; then
  exec 9>"$STEP_LOCK"
  start=$SECONDS
  flock 9
  [ $((SECONDS - start)) -gt 0 ] && waited=" (after $((SECONDS - start)) s waiting for $STEP_LOCK)"
fi
start=$SECONDS
"$@" >>"$log" 2>&1
rc=$?
took=$((SECONDS - start))
echo "## $label: exit $rc after $took s$waited" >>"$log"
if [ $rc -ne 0 ]; then
  {
    echo "[$group] $name: $label FAILED (exit $rc after $took s). The last lines of $log:"
    tail -n 40 "$log" | sed 's/^/    /'
    echo "[$group] $name: $label FAILED; the whole output is in $log"
  } >&2
  exit $rc
fi
echo "[$group] $name: $label done in $took s$waited"
