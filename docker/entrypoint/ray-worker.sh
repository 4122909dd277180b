#!/usr/bin/env bash
# The Ray worker role: joins the head at RAY_HEAD_ADDRESS (host:port) with the GPUs that
# compose reserved for this container. Extra `ray start` flags come from the compose command.
set -euo pipefail

export RAY_AUTH_MODE=token
head="${RAY_HEAD_ADDRESS:?set RAY_HEAD_ADDRESS, e.g. ray-head:6379}"
token_file="${RAY_AUTH_TOKEN_PATH:?set RAY_AUTH_TOKEN_PATH to the Ray token file}"
if [[ ! -s "$token_file" ]]; then
    echo "error: the Ray token file $token_file is missing or empty" >&2
    exit 2
fi
# This node's address is the one it reaches the head from (see ray-head.sh for why).
node_ip="$(python - "$head" <<'PY'
import socket
import sys

host, _, port = sys.argv[1].rpartition(":")
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.connect((socket.gethostbyname(host), int(port)))
print(probe.getsockname()[0])
PY
)"
exec ray start --block --disable-usage-stats \
    --address="$head" \
    --node-ip-address="$node_ip" \
    "$@"
