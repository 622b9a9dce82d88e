#!/usr/bin/env bash
# The compose stack's internal credential (README: Limits and security): `make up` runs this first. It writes
# ROUNDHOUSE_INTERNAL_TOKEN=<random> to .env unless .env or the environment already has one, so a deployment
# gets its own secret on its first start and keeps it afterwards. docker-compose.yml requires the variable
# (it hands it to the gateway and to every family service); run this once before a bare `docker compose up`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${ROUNDHOUSE_INTERNAL_TOKEN:-}" ]; then exit 0; fi
if [ -f .env ] && grep -q '^ROUNDHOUSE_INTERNAL_TOKEN=.' .env; then exit 0; fi
token=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
umask 077
if [ -f .env ] && [ -n "$(tail -c 1 .env)" ]; then echo >> .env; fi
echo "ROUNDHOUSE_INTERNAL_TOKEN=$token" >> .env
echo "wrote a new internal credential to .env (ROUNDHOUSE_INTERNAL_TOKEN): the services answer the gateway only"
