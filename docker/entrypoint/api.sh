#!/usr/bin/env bash
# The API role: python -m service serve, against the Ray head named by GRADREG_RAY_JOBS_URL.
set -euo pipefail

: "${GRADREG_API_TOKENS:?set GRADREG_API_TOKENS (comma-separated bearer tokens) in .env}"
: "${GRADREG_RAY_JOBS_URL:?set GRADREG_RAY_JOBS_URL, e.g. http://ray-head:8265}"
token_file="${GRADREG_RAY_AUTH_TOKEN_PATH:?set GRADREG_RAY_AUTH_TOKEN_PATH to the Ray token file}"
# Without the cluster's token file the service would generate a token of its own, which the
# head would refuse.
if [[ ! -s "$token_file" ]]; then
    echo "error: the Ray token file $token_file is missing or empty" >&2
    exit 2
fi
exec python -m service serve "$@"
