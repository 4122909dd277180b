#!/usr/bin/env bash
# `minio server DIR [--address [HOST]:PORT] [--console-address ADDR]`, the one form the stack
# runs, served by moto's S3 server on PORT (default 9000). moto accepts any key
# (MINIO_ROOT_USER/PASSWORD are not checked) and keeps the objects in memory, not in DIR: a
# restarted container starts empty. There is no console.
set -euo pipefail
[[ "${1:-}" == minio ]] && shift  # the official image's entrypoint takes both forms
if [[ "${1:-}" != server || -z "${2:-}" ]]; then
    echo "minio stand-in: only 'minio server DIR [--address ADDR] [--console-address ADDR]'" \
        "runs here, not: minio $*" >&2
    exit 2
fi
shift 2
port=9000
while [[ $# -gt 0 ]]; do
    case "$1" in
        --address) port="${2##*:}"; shift 2 ;;
        --console-address) shift 2 ;;
        *) echo "minio stand-in: $1 is not an option it knows" >&2; exit 2 ;;
    esac
done
exec /opt/moto/bin/moto_server --host 0.0.0.0 --port "$port"
