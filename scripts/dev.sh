#!/usr/bin/env bash
# make dev: the gateway and the five family services as local processes, each in its own environment,
# on CPU. Waits until every one is healthy (no fixed sleeps), sends sample requests through the
# gateway to show the stack works (a caption, speech, its transcript, a face detection, a verification
# and text embeddings), then runs until Ctrl-C or SIGTERM, which stops them all. A component that exits is
# named, with its log, and started again (DEV_RESTARTS times at most; the others keep running).
#
# For harnesses (scripts/schemathesis.sh): DEV_SAMPLES=0 skips the sample requests; DEV_READY_FILE,
# when set, is written once the stack is ready, so a caller can wait for it and then test the stack.
# DEV_LOG_DIR (build/logs) holds each component's log; DEV_RESTARTS (5) bounds its restarts.
#
# System packages: curl (this script) and flite (the flite voices) are
# installed with apt-get when this runs as root, as .ci/run does; otherwise they are named and the stack
# starts without them (DEV_SYSTEM_PACKAGES=0 skips the step). FORCE_DEVICE=cpu runs every catalog model on
# the CPU (each component's *_FORCE_DEVICE, as compose.cpu.yml sets them): the default catalog on a box
# without a GPU. Without it such a box lists the catalog's cuda models as unavailable and serves the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
CATALOG=${CATALOG:-build/tiny-models/catalog.yaml}
GW_PY=${GW_PY:-.venvs/gateway/bin/python}
CAP_PY=${CAP_PY:-.venvs/caption-svc/bin/python}
FACE_PY=${FACE_PY:-.venvs/face-svc/bin/python}
TTS_PY=${TTS_PY:-.venvs/tts-svc/bin/python}
ASR_PY=${ASR_PY:-.venvs/asr-svc/bin/python}
EMBED_PY=${EMBED_PY:-.venvs/embed-svc/bin/python}
GATEWAY_PORT=${GATEWAY_PORT:-8080}
CAPTION_PORT=${CAPTION_PORT:-8101}
FACE_PORT=${FACE_PORT:-8102}
TTS_PORT=${TTS_PORT:-8104}
ASR_PORT=${ASR_PORT:-8103}
EMBED_PORT=${EMBED_PORT:-8105}
DEV_SAMPLES=${DEV_SAMPLES:-1}
DEV_READY_FILE=${DEV_READY_FILE:-}

system_packages() {
  local need=() pkg
  for pkg in curl flite; do command -v "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
  if [ ${#need[@]} -eq 0 ]; then return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing system packages: ${need[*]}"
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; then
      return 0
    fi
    echo "!! apt-get could not install ${need[*]}" >&2
  else
    echo "!! not installed: ${need[*]}; as root: apt-get install ${need[*]} (Debian/Ubuntu)" >&2
  fi
  if ! command -v curl >/dev/null 2>&1; then echo "!! make dev needs curl" >&2; exit 1; fi
  echo "== going on without flite: its model is listed unavailable (GET /admin/models)" >&2
}
if [ "${DEV_SYSTEM_PACKAGES:-1}" != 0 ]; then system_packages; fi
if [ -n "${FORCE_DEVICE:-}" ]; then
  export GATEWAY_FORCE_DEVICE=$FORCE_DEVICE CAPTION_SVC_FORCE_DEVICE=$FORCE_DEVICE FACE_SVC_FORCE_DEVICE=$FORCE_DEVICE \
    TTS_SVC_FORCE_DEVICE=$FORCE_DEVICE ASR_SVC_FORCE_DEVICE=$FORCE_DEVICE EMBED_SVC_FORCE_DEVICE=$FORCE_DEVICE
fi

if [ ! -f "$CATALOG" ]; then
  echo "catalog $CATALOG does not exist (run 'make tiny-models', or set CATALOG=models.yaml)" >&2
  exit 1
fi
# CUDA numbers its devices fastest first, NVML by PCI bus: the same order on both sides, so that cuda:N
# in the catalog is the card whose memory the gateway meters.
export CUDA_DEVICE_ORDER=${CUDA_DEVICE_ORDER:-PCI_BUS_ID}
# The internal credential (README: Limits and security): a new one each run unless ROUNDHOUSE_INTERNAL_TOKEN is
# set, handed to the gateway and every service under its own prefix; only /health/* and /metrics answer without it.
ROUNDHOUSE_INTERNAL_TOKEN=${ROUNDHOUSE_INTERNAL_TOKEN:-$(head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')}
for prefix in GATEWAY CAPTION_SVC FACE_SVC TTS_SVC ASR_SVC EMBED_SVC; do export "${prefix}_INTERNAL_TOKEN=$ROUNDHOUSE_INTERNAL_TOKEN"; done
LOG_DIR=${DEV_LOG_DIR:-build/logs}
DEV_RESTARTS=${DEV_RESTARTS:-5}
mkdir -p "$LOG_DIR"

# Each component by name: how it starts, its pid, how often it was restarted, when it may start again.
# A component that exits is started again (after 1 s, 2 s, ... up to 10 s) at most DEV_RESTARTS times;
# the others keep running meanwhile. Its output goes to the terminal and to $LOG_DIR/<name>.log.
NAMES=(caption-svc face-svc tts-svc asr-svc embed-svc gateway)
declare -A PID=() RESTARTS=() AGAIN_AT=()
launch() {  # name
  local log="$LOG_DIR/$1.log"
  case $1 in
    caption-svc) CAPTION_SVC_CATALOG=$CATALOG CAPTION_SVC_PORT=$CAPTION_PORT "$CAP_PY" -m caption_svc > >(tee -a "$log") 2>&1 & ;;
    face-svc) FACE_SVC_CATALOG=$CATALOG FACE_SVC_PORT=$FACE_PORT "$FACE_PY" -m face_svc > >(tee -a "$log") 2>&1 & ;;
    tts-svc) TTS_SVC_CATALOG=$CATALOG TTS_SVC_PORT=$TTS_PORT "$TTS_PY" -m tts_svc > >(tee -a "$log") 2>&1 & ;;
    asr-svc) ASR_SVC_CATALOG=$CATALOG ASR_SVC_PORT=$ASR_PORT "$ASR_PY" -m asr_svc > >(tee -a "$log") 2>&1 & ;;
    embed-svc) EMBED_SVC_CATALOG=$CATALOG EMBED_SVC_PORT=$EMBED_PORT "$EMBED_PY" -m embed_svc > >(tee -a "$log") 2>&1 & ;;
    gateway) GATEWAY_CATALOG=$CATALOG GATEWAY_PORT=$GATEWAY_PORT \
      GATEWAY_SERVICES="{\"caption\": \"http://127.0.0.1:$CAPTION_PORT\", \"face\": \"http://127.0.0.1:$FACE_PORT\", \"tts\": \"http://127.0.0.1:$TTS_PORT\", \"asr\": \"http://127.0.0.1:$ASR_PORT\", \"embed\": \"http://127.0.0.1:$EMBED_PORT\"}" \
      "$GW_PY" -m gateway > >(tee -a "$log") 2>&1 & ;;
  esac
  PID[$1]=$!
}

# One round of supervision: a component that exited is named with its status and its log, and started
# again in its time, or given up on (the rest keep running) once it has used its restarts.
supervise() {
  local name rc n
  for name in "${NAMES[@]}"; do
    if [ -n "${PID[$name]:-}" ] && ! kill -0 "${PID[$name]}" 2>/dev/null; then
      rc=0; wait "${PID[$name]}" 2>/dev/null || rc=$?
      PID[$name]=""
      echo "== $name exited with status $rc; its log: $LOG_DIR/$name.log" >&2
      if [ "${RESTARTS[$name]:-0}" -ge "$DEV_RESTARTS" ]; then
        echo "== $name exited $((DEV_RESTARTS + 1)) times; not restarting it (the others keep running)." \
             "Fix what its log says, then restart make dev." >&2
        AGAIN_AT[$name]=""
      else
        n=$((${RESTARTS[$name]:-0} + 1))
        RESTARTS[$name]=$n
        AGAIN_AT[$name]=$((SECONDS + (n < 10 ? n : 10)))
        echo "== restarting $name in ${n} s (restart $n of $DEV_RESTARTS)" >&2
      fi
    fi
    if [ -z "${PID[$name]:-}" ] && [ -n "${AGAIN_AT[$name]:-}" ] && [ "$SECONDS" -ge "${AGAIN_AT[$name]}" ]; then
      AGAIN_AT[$name]=""
      launch "$name"
    fi
  done
}

cleanup() {
  trap - EXIT INT TERM
  echo; echo "stopping..."
  for name in "${NAMES[@]}"; do [ -n "${PID[$name]:-}" ] && kill "${PID[$name]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

for name in "${NAMES[@]}"; do launch "$name"; done

wait_ready() {  # url seconds
  local deadline=$((SECONDS + $2))
  until curl -sf "$1" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "$1 not ready after $2 s" >&2; exit 1; fi
    supervise
    sleep 0.2
  done
}
wait_ready "http://127.0.0.1:$GATEWAY_PORT/health/ready" 60
wait_ready "http://127.0.0.1:$CAPTION_PORT/health/ready" 60
wait_ready "http://127.0.0.1:$FACE_PORT/health/ready" 60
wait_ready "http://127.0.0.1:$TTS_PORT/health/ready" 60
wait_ready "http://127.0.0.1:$ASR_PORT/health/ready" 60
wait_ready "http://127.0.0.1:$EMBED_PORT/health/ready" 60

echo
echo "== Roundhouse is up: gateway http://127.0.0.1:$GATEWAY_PORT (docs at /docs), catalog $CATALOG"

# One demo step: curl's answer must be a 2xx of the expected content type, else the demo stops here with
# the error's code and message (an error body is never kept as the step's output). Prints a JSON or text
# answer, and the size of a binary one; with DEMO_SHOW=dim (an embeddings answer), its vectors' count and
# size instead of their numbers.
demo_step() {  # title expected-content-type output-file curl-arguments...
  local title=$1 want=$2 out=$3 meta status ctype
  shift 3
  echo "== $title"
  if ! meta=$(curl -sS -o "$out.part" -w '%{http_code} %{content_type}' "$@"); then
    rm -f "$out.part"; echo "!! the demo stopped at this step: curl could not reach the gateway" >&2; return 1
  fi
  status=${meta%% *}; ctype=${meta#* }
  if [[ $status != 2* || $ctype != "$want"* ]]; then
    echo "!! the demo stopped at this step: HTTP $status, $ctype (expected $want)" >&2
    "$GW_PY" -c 'import json, sys; e = json.load(open(sys.argv[1]))["error"]; print("!!", e["code"] + ":", e["message"])' \
      "$out.part" >&2 2>/dev/null || head -c 600 "$out.part" >&2
    rm -f "$out.part"
    return 1
  fi
  mv "$out.part" "$out"
  if [[ ${DEMO_SHOW:-} == dim ]]; then
    "$GW_PY" -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["model"] + ":", len(r["data"]), "vectors of", len(r["data"][0]["embedding"]), "dimensions")' "$out"
    return
  fi
  case $want in
    application/json|text/*) cat "$out"; echo ;;
    *) echo "$out: $(wc -c < "$out") bytes of $ctype" ;;
  esac
}

samples() {
  local gw="127.0.0.1:$GATEWAY_PORT"
  mkdir -p build/demo
  "$CAP_PY" -c "from PIL import Image; Image.radial_gradient('L').resize((320, 240)).convert('RGB').save('build/sample.jpg')" || return 1
  demo_step "curl -F file=@build/sample.jpg $gw/v1/images/captions" application/json build/demo/caption.json \
    -F file=@build/sample.jpg "$gw/v1/images/captions" || return 1
  # No model named: each family's first catalog model, in the tiny catalog the real Piper voice (en_US-joe-medium)
  # and the real Whisper tiny.en, both from PyPI wheels (README: Offline models: measured quality).
  local body='{"voice": "alloy", "input": "Hello there.", "response_format": "wav"}'
  demo_step "curl $gw/v1/audio/speech -H 'content-type: application/json' -d '$body' -o build/hello.wav" audio/wav build/hello.wav \
    "$gw/v1/audio/speech" -H 'content-type: application/json' -d "$body" || return 1
  demo_step "curl -F file=@build/hello.wav -F response_format=text $gw/v1/audio/transcriptions" \
    text/plain build/demo/transcript.txt \
    -F file=@build/hello.wav -F response_format=text "$gw/v1/audio/transcriptions" || return 1
  # A real photo that ships in scikit-image, and a mirrored, cropped copy: no model named, the catalog's first
  # face model (in the tiny catalog the real YuNet + SFace) finds her face and says the two are one person.
  "$FACE_PY" -c "from PIL import Image; from skimage import data; a = Image.fromarray(data.astronaut()); a.save('build/astronaut.jpg', quality=95); a.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((32, 40, 452, 400)).save('build/astronaut-flipped.jpg', quality=90)" || return 1
  demo_step "curl -F file=@build/astronaut.jpg $gw/v1/faces/detect" application/json build/demo/faces.json \
    -F file=@build/astronaut.jpg "$gw/v1/faces/detect" || return 1
  demo_step "curl -F file_a=@build/astronaut.jpg -F file_b=@build/astronaut-flipped.jpg $gw/v1/faces/verify" \
    application/json build/demo/verify.json \
    -F file_a=@build/astronaut.jpg -F file_b=@build/astronaut-flipped.jpg "$gw/v1/faces/verify" || return 1
  # Embeddings name their model (OpenAI's request does): the catalog's first embed model, from GET /v1/models.
  local embed_model
  if ! embed_model=$(curl -sS "$gw/v1/models" | "$GW_PY" -c 'import json, sys; print(next(m["id"] for m in json.load(sys.stdin)["data"] if m["family"] == "embed"))' 2>/dev/null); then
    echo "!! the demo stopped: no embed model read from GET $gw/v1/models" >&2; return 1
  fi
  body="{\"model\": \"$embed_model\", \"input\": [\"a photo of an astronaut\", \"a red bicycle\"]}"
  DEMO_SHOW=dim demo_step "curl $gw/v1/embeddings -H 'content-type: application/json' -d '$body'" application/json \
    build/demo/embeddings.json "$gw/v1/embeddings" -H 'content-type: application/json' -d "$body" || return 1
  echo "== every demo step passed"
}
if [ "$DEV_SAMPLES" != 0 ] && ! samples; then
  echo "!! the demo stopped at its first failing step (above); the stack keeps running: GET /admin/models shows" \
       "each model's state and reason, build/logs/ each component's log" >&2
fi

if [ -n "$DEV_READY_FILE" ]; then touch "$DEV_READY_FILE"; fi
echo "== Logs: $LOG_DIR/<name>.log. A component that exits is restarted (at most $DEV_RESTARTS times each)."
echo "== Ctrl-C stops every process."
while true; do
  supervise
  sleep 0.5
done
