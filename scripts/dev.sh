#!/usr/bin/env bash
# make dev: the gateway and the four family services as local processes, each in its own environment,
# on CPU. Waits until every one is healthy (no fixed sleeps), sends sample requests through the
# gateway to show the stack works (a caption, speech, its transcript, a face detection and a
# verification), then runs until Ctrl-C or SIGTERM, which stops them all.
#
# For harnesses (scripts/schemathesis.sh): DEV_SAMPLES=0 skips the sample requests; DEV_READY_FILE,
# when set, is written once the stack is ready, so a caller can wait for it and then test the stack.
set -euo pipefail
cd "$(dirname "$0")/.."
CATALOG=${CATALOG:-build/tiny-models/catalog.yaml}
GW_PY=${GW_PY:-.venvs/gateway/bin/python}
CAP_PY=${CAP_PY:-.venvs/caption-svc/bin/python}
FACE_PY=${FACE_PY:-.venvs/face-svc/bin/python}
TTS_PY=${TTS_PY:-.venvs/tts-svc/bin/python}
ASR_PY=${ASR_PY:-.venvs/asr-svc/bin/python}
GATEWAY_PORT=${GATEWAY_PORT:-8080}
CAPTION_PORT=${CAPTION_PORT:-8101}
FACE_PORT=${FACE_PORT:-8102}
TTS_PORT=${TTS_PORT:-8104}
ASR_PORT=${ASR_PORT:-8103}
DEV_SAMPLES=${DEV_SAMPLES:-1}
DEV_READY_FILE=${DEV_READY_FILE:-}

if [ ! -f "$CATALOG" ]; then
  echo "catalog $CATALOG does not exist (run 'make tiny-models', or set CATALOG=models.yaml)" >&2
  exit 1
fi
# CUDA numbers its devices fastest first, NVML by PCI bus: the same order on both sides, so that cuda:N
# in the catalog is the card whose memory the gateway meters.
export CUDA_DEVICE_ORDER=${CUDA_DEVICE_ORDER:-PCI_BUS_ID}
mkdir -p build/logs
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo; echo "stopping..."
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

CAPTION_SVC_CATALOG=$CATALOG CAPTION_SVC_PORT=$CAPTION_PORT "$CAP_PY" -m caption_svc &
pids+=($!)
FACE_SVC_CATALOG=$CATALOG FACE_SVC_PORT=$FACE_PORT "$FACE_PY" -m face_svc &
pids+=($!)
TTS_SVC_CATALOG=$CATALOG TTS_SVC_PORT=$TTS_PORT "$TTS_PY" -m tts_svc &
pids+=($!)
ASR_SVC_CATALOG=$CATALOG ASR_SVC_PORT=$ASR_PORT "$ASR_PY" -m asr_svc &
pids+=($!)
GATEWAY_CATALOG=$CATALOG GATEWAY_PORT=$GATEWAY_PORT \
GATEWAY_SERVICES="{\"caption\": \"http://127.0.0.1:$CAPTION_PORT\", \"face\": \"http://127.0.0.1:$FACE_PORT\", \"tts\": \"http://127.0.0.1:$TTS_PORT\", \"asr\": \"http://127.0.0.1:$ASR_PORT\"}" "$GW_PY" -m gateway &
pids+=($!)

wait_ready() {  # url seconds
  local deadline=$((SECONDS + $2))
  until curl -sf "$1" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "$1 not ready after $2 s" >&2; exit 1; fi
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "a process exited; see the log above" >&2; exit 1; }; done
    sleep 0.2
  done
}
wait_ready "http://127.0.0.1:$GATEWAY_PORT/health/ready" 60
wait_ready "http://127.0.0.1:$CAPTION_PORT/health/ready" 60
wait_ready "http://127.0.0.1:$FACE_PORT/health/ready" 60
wait_ready "http://127.0.0.1:$TTS_PORT/health/ready" 60
wait_ready "http://127.0.0.1:$ASR_PORT/health/ready" 60

echo
echo "== Roundhouse is up: gateway http://127.0.0.1:$GATEWAY_PORT (docs at /docs), catalog $CATALOG"

samples() {
  mkdir -p build
  "$CAP_PY" -c "from PIL import Image; Image.radial_gradient('L').resize((320, 240)).convert('RGB').save('build/sample.jpg')"
  echo "== curl -F file=@build/sample.jpg 127.0.0.1:$GATEWAY_PORT/v1/images/captions"
  curl -sS -F file=@build/sample.jpg "127.0.0.1:$GATEWAY_PORT/v1/images/captions"
  echo
  echo "== curl 127.0.0.1:$GATEWAY_PORT/v1/audio/speech -H 'content-type: application/json' -d '{\"model\": \"flite\", \"voice\": \"slt\", \"input\": \"Hello there.\", \"response_format\": \"wav\"}' -o build/hello.wav"
  curl -sS "127.0.0.1:$GATEWAY_PORT/v1/audio/speech" -H 'content-type: application/json' \
    -d '{"model": "flite", "voice": "slt", "input": "Hello there.", "response_format": "wav"}' -o build/hello.wav \
    -w "build/hello.wav: %{size_download} bytes of %{content_type}\n"
  echo
  echo "== curl -F file=@build/hello.wav -F model=pocketsphinx-en-us -F response_format=text 127.0.0.1:$GATEWAY_PORT/v1/audio/transcriptions"
  curl -sS -F file=@build/hello.wav -F model=pocketsphinx-en-us -F response_format=text "127.0.0.1:$GATEWAY_PORT/v1/audio/transcriptions"
  echo
  # A real photo that ships in scikit-image, and a mirrored, cropped copy: dlib's real models find her face
  # and say the two are the same person.
  "$FACE_PY" -c "from PIL import Image; from skimage import data; a = Image.fromarray(data.astronaut()); a.save('build/astronaut.jpg', quality=95); a.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((32, 40, 452, 400)).save('build/astronaut-flipped.jpg', quality=90)"
  echo "== curl -F file=@build/astronaut.jpg -F model=dlib-resnet 127.0.0.1:$GATEWAY_PORT/v1/faces/detect"
  curl -sS -F file=@build/astronaut.jpg -F model=dlib-resnet "127.0.0.1:$GATEWAY_PORT/v1/faces/detect"
  echo
  echo "== curl -F file_a=@build/astronaut.jpg -F file_b=@build/astronaut-flipped.jpg -F model=dlib-resnet 127.0.0.1:$GATEWAY_PORT/v1/faces/verify"
  curl -sS -F file_a=@build/astronaut.jpg -F file_b=@build/astronaut-flipped.jpg -F model=dlib-resnet "127.0.0.1:$GATEWAY_PORT/v1/faces/verify"
  echo
}
if [ "$DEV_SAMPLES" != 0 ]; then samples; fi

if [ -n "$DEV_READY_FILE" ]; then touch "$DEV_READY_FILE"; fi
echo "== Ctrl-C stops every process."
wait -n "${pids[@]}"
