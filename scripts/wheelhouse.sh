#!/usr/bin/env bash
# Fill wheelhouse/<image>/ with every wheel an image needs, built inside the base image (so the
# Python ABI matches), for building later without PyPI:
#   scripts/wheelhouse.sh gateway caption-svc ...      then: make build PIP_NO_INDEX=1
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE_IMAGE:-python:3.11-slim-bookworm}
for svc in "$@"; do
  echo "== wheelhouse/$svc"
  mkdir -p "wheelhouse/$svc"
  docker run --rm -v "$PWD:/src" -w /src "$BASE" sh -c \
    "python3 -m venv /tmp/v && /tmp/v/bin/pip wheel --quiet -w wheelhouse/$svc -r $svc/requirements.image.txt ./modelhost ./$svc \
     && if [ -f $svc/requirements.nodeps.txt ]; then /tmp/v/bin/pip wheel --quiet --no-deps -w wheelhouse/$svc -r $svc/requirements.nodeps.txt; fi"
done
