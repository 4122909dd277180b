#!/usr/bin/env bash
# End-to-end check of the stack on a real GPU host (CI cannot run it: no Docker engine there).
# From the repository root, with .env filled in (docs/deploy.md):
#   docker/smoke.sh          brings the stack up, waits for every healthcheck, downloads CIFAR-10
#                            into the datasets volume, runs a 2-trial GPU sweep through the API,
#                            checks MLflow has its runs, and tears the stack down (volumes kept)
#   KEEP_UP=1 docker/smoke.sh   the same, but leaves the stack running
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -f .env ]]; then
    echo "error: no .env here; copy .env.example and fill in its docker-compose section" >&2
    exit 2
fi
compose=(docker compose -f docker-compose.yml)

tear_down() {
    if [[ "${KEEP_UP:-0}" != 1 ]]; then
        "${compose[@]}" down
    fi
}
trap tear_down EXIT

echo "== build and start, waiting for every healthcheck"
"${compose[@]}" up --detach --build --wait --wait-timeout 900
"${compose[@]}" ps

echo "== the GPUs the Ray cluster sees"
"${compose[@]}" exec -T ray-head ray status

echo "== CIFAR-10 into the datasets volume (skipped when present)"
"${compose[@]}" exec -T ray-worker python -m gradreg data download cifar10 --dir /data

echo "== a two-trial GPU sweep through the API, then its MLflow runs"
"${compose[@]}" exec -T api python - <docker/smoke_sweep.py

echo "smoke: passed"
