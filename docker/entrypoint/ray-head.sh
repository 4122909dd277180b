#!/usr/bin/env bash
# The Ray head role. Sweep drivers run here as Ray Jobs, so this container carries the store's,
# MLflow's and the bucket's settings. Extra `ray start` flags come from the compose command.
set -euo pipefail

export RAY_AUTH_MODE=token
token_file="${RAY_AUTH_TOKEN_PATH:?set RAY_AUTH_TOKEN_PATH to the Ray token file}"
if [[ ! -s "$token_file" ]]; then
    echo "error: the Ray token file $token_file is missing or empty" >&2
    exit 2
fi
# The address on the compose network. Ray's own guess follows the default route, which on an
# overlay network is docker_gwbridge, unreachable from the other nodes.
node_ip="$(python -c 'import socket; print(socket.gethostbyname(socket.gethostname()))')"
exec ray start --head --block --disable-usage-stats \
    --node-ip-address="$node_ip" \
    --port=6379 \
    --dashboard-host=0.0.0.0 \
    --dashboard-port=8265 \
    "$@"
