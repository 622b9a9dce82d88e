#!/usr/bin/env bash
# Build the Python base image without a registry (air-gapped sites, CI): debootstrap a minimal
# Debian bookworm with python3 + venv + pip, trust the host's CA bundle (so pip inside image
# builds trusts what the host trusts), and import it into Docker.
#
#   scripts/make_base_image.sh [IMAGE]      default IMAGE: roundhouse/python-base:bookworm-3.11
#
# Then build with it:  BASE_IMAGE=roundhouse/python-base:bookworm-3.11 make up
set -euo pipefail
IMAGE=${1:-roundhouse/python-base:bookworm-3.11}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE already exists"; exit 0
fi
command -v debootstrap >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }

root=$(mktemp -d /tmp/roundhouse-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm into $root (2-3 minutes)"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$root" "$MIRROR" >/dev/null
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
# python:3.11-slim puts `python` on PATH; make the debootstrap image behave the same.
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'LABEL org.roundhouse.base-image=1' -c 'CMD ["python3"]' - "$IMAGE" >/dev/null
echo "imported $IMAGE ($(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
