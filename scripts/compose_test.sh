#!/usr/bin/env bash
# The compose stage of CI: install/start the Docker engine, build the base image without a registry,
# build every image, start the stack on CPU with the tiny models through a volume, run the
# end-to-end suite against the published gateway port, then take everything down.
set -euo pipefail
cd "$(dirname "$0")/.."
GW_PY=${GW_PY:-.venvs/gateway/bin/python}
BASE=roundhouse/python-base:bookworm-3.11
APP_SERVICES="gateway caption-svc face-svc asr-svc tts-svc embed-svc"
export BASE_IMAGE=$BASE ROUNDHOUSE_MODELS_DIR=./build/tiny-models ROUNDHOUSE_CATALOG_FILE=catalog.yaml
export GATEWAY_PUBLISH=127.0.0.1:18080 COMPOSE_PROJECT_NAME=roundhouse-ci
# The stack's internal credential (docker-compose.yml requires one): a new one for each CI run.
export ROUNDHOUSE_INTERNAL_TOKEN=${ROUNDHOUSE_INTERNAL_TOKEN:-$(head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')}
compose=(docker compose -f docker-compose.yml -f compose.cpu.yml)

# The family images and the build cache (about 33 GB), not the base image (a 2-3 minute debootstrap).
# Labels are inherited, so the images are picked by name, not by the base image's label.
drop_images() {
  docker image ls 'roundhouse/*' --format '{{.Repository}}:{{.Tag}}' | { grep -vxF "$BASE" || true; } | xargs -r docker image rm -f >/dev/null
  docker image prune -f >/dev/null
  docker builder prune -af >/dev/null
}
if [ "${1:-}" = "--clean" ]; then  # CI, after the run: leave the disk to the next fresh clone
  drop_images
  echo "== dropped the family images and the build cache; $(df -h --output=avail / | tail -1 | tr -d ' ') free"
  exit 0
fi

chmod -R a+rX build/tiny-models  # the containers run as a non-root user
scripts/docker_setup.sh
scripts/make_base_image.sh "$BASE"

# The five family images need about 33 GB of layers when nothing is cached (CUDA torch wheels; embed-svc's
# torch 2.8 + transformers is about 7 GB of it, as caption-svc's, shared/notes/build-machines.md). Build
# cache from an older base image can never be hit again, so when the disk is short, drop the cache
# rather than fail half-way through a pip install with "No space left on device".
NEED_GB=${COMPOSE_TEST_NEED_GB:-37}
free_gb() { df -BG --output=avail "$(docker info --format '{{.DockerRootDir}}')" | tail -1 | tr -dc 0-9; }
if [ "$(free_gb)" -lt "$NEED_GB" ]; then
  echo "== only $(free_gb) GB free for images (want $NEED_GB): dropping old Roundhouse images and the build cache"
  drop_images
fi
echo "== $(free_gb) GB free for images"
if [ "$(free_gb)" -lt "$NEED_GB" ]; then
  echo "!! still under $NEED_GB GB free after pruning the build cache: the image builds would run out of disk" >&2
  df -h >&2
  exit 1
fi
t0=$SECONDS
# Build one at a time: two cores, and each family image is gigabytes of wheels.
for svc in $APP_SERVICES; do
  echo "== building $svc"
  "${compose[@]}" build "$svc"
done
echo "== images built in $((SECONDS - t0)) s"
docker image ls 'roundhouse/*'

cleanup() {
  status=$?
  if [ $status -ne 0 ]; then "${compose[@]}" logs --tail=80 $APP_SERVICES || true; fi
  "${compose[@]}" down -v --remove-orphans || true
  exit $status
}
trap cleanup EXIT
echo "== docker compose up --wait ($APP_SERVICES)"
"${compose[@]}" up -d --wait --wait-timeout 300 $APP_SERVICES
"${compose[@]}" ps
ROUNDHOUSE_URL=http://$GATEWAY_PUBLISH "$GW_PY" -m pytest tests/compose -m compose -q --junitxml=build/test-results/compose.xml
