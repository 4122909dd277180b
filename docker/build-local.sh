#!/usr/bin/env bash
# Build every image docker-compose.yml runs, with Podman, on a machine that reaches Debian's
# packages and PyPI but no container registry (these machines, CI). As root; `make images`.
#
#  1. The Python base that the Dockerfiles' FROM names (python:3.11.14-slim-bookworm), made
#     from Debian's packages with mmdebstrap and tagged under that name, so that the unmodified
#     FROM resolves with --pull=never. Skipped when an image of that name is there already: a
#     real one pulled from a registry, or ours from the same inputs.
#  2. docker/Dockerfile (TORCH_VARIANT, default cpu here) and docker/mlflow.Dockerfile, under
#     the names compose gives them. The torch wheel comes from $GRADREG_WHEELS (/opt/wheels)
#     when that directory exists, mounted into the build, instead of the variant's index.
#  3. Stand-ins for the third-party images, built from Debian's packages and PyPI under the
#     names compose uses (docker/standins/; docker/podman.yml names where they differ).
#  4. docker/image-smoke.sh inside each image.
#
# Image layers stay in Podman's store, and pip's downloads in the builds' cache mount: a run
# with unchanged inputs rebuilds nothing. GRADREG_BUILD_TIMES=FILE writes each step's seconds
# there as JSON (benchmarks/container_stack.py reads it). --refresh-base makes the base anew.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

python="${PYTHON:-.venv/bin/python}"
variant="${TORCH_VARIANT:-cpu}"
wheels="${GRADREG_WHEELS:-/opt/wheels}"
refresh_base=0
for arg in "$@"; do
    case "$arg" in
        --refresh-base) refresh_base=1 ;;
        *) echo "usage: $0 [--refresh-base]" >&2; exit 2 ;;
    esac
done

docker/podman/engine.sh configure
# Docker's image format: the OCI one has no SHELL (the Dockerfiles run bash) or HEALTHCHECK.
build=(podman build --format docker --pull=never --layers)
declare -A millis=()
timed() {  # timed NAME COMMAND...: run it, and keep its wall time (ms) under NAME
    local name="$1" start
    shift
    echo "== $name"
    start=$(date +%s%N)
    "$@"
    millis[$name]=$((($(date +%s%N) - start) / 1000000))
    echo "== $name: $((millis[$name] / 1000)) s"
}

# The image names, as compose renders them: .env's settings over docker/ci.env's fakes.
compose="$("$python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
env_files=(--env-file docker/ci.env)
[[ -f .env ]] && env_files+=(--env-file .env)
image_of() {
    "$compose" "${env_files[@]}" -f docker-compose.yml config --format json \
        | "$python" -c 'import json, sys; print(json.load(sys.stdin)["services"][sys.argv[1]]["image"])' "$1"
}
app_image="$(image_of api)"
mlflow_image="$(image_of mlflow)"
postgres_image="$(image_of postgres)"
minio_image="$(image_of minio)"
base_image="$(sed -n 's/^ARG PYTHON_IMAGE=//p' docker/Dockerfile)"
if [[ "$(sed -n 's/^ARG PYTHON_IMAGE=//p' docker/mlflow.Dockerfile)" != "$base_image" ]]; then
    echo "error: docker/Dockerfile and docker/mlflow.Dockerfile name different bases" >&2
    exit 2
fi
# Docker's name for a short one: FROM python:… means docker.io/library/python:….
qualified() {
    case "$1" in
        */*.*/* | *.*/*) echo "$1" ;;  # a registry host already
        */*) echo "docker.io/$1" ;;
        *) echo "docker.io/library/$1" ;;
    esac
}

# ------------------------------------------------------------------------------ 1. the base
mirror="${GRADREG_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${GRADREG_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}"
packages=python3,python3-venv,python-is-python3,ca-certificates,netbase,tzdata
# This machine's own certificate authorities (Debian keeps them here): pip inside a build
# reaches PyPI through them.
local_cas=(/usr/local/share/ca-certificates/*.crt)
[[ -e "${local_cas[0]}" ]] || local_cas=()
base_inputs="$(
    {
        echo "$mirror $security $packages"
        sed -n '/^# --* 1. the base/,/^# --* 2\./p' "$0"
        [[ ${#local_cas[@]} -gt 0 ]] && cat "${local_cas[@]}"
    } | sha256sum | cut -c1-16
)"
make_base() {
    local tmp
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    mkdir "$tmp/cas"
    [[ ${#local_cas[@]} -gt 0 ]] && cp "${local_cas[@]}" "$tmp/cas/"
    mmdebstrap --variant=minbase --include="$packages" \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --customize-hook="cp $tmp/cas/* \"\$1/usr/local/share/ca-certificates/\" 2>/dev/null || true" \
        --customize-hook='chroot "$1" update-ca-certificates' \
        bookworm "$tmp/rootfs.tar" \
        "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
        "deb $security bookworm-security main"
    podman import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' \
        --change "LABEL gradreg.base.inputs=$base_inputs" \
        --change "LABEL org.opencontainers.image.description=Debian bookworm's python3, made by docker/build-local.sh in place of $base_image" \
        "$tmp/rootfs.tar" "$(qualified "$base_image")"
}
ours="$(podman image inspect --format '{{index .Config.Labels "gradreg.base.inputs"}}' \
    "$(qualified "$base_image")" 2>/dev/null || echo absent)"
if [[ "$ours" == absent || "$refresh_base" == 1 ]]; then
    timed base make_base
elif [[ -z "$ours" || "$ours" == "<no value>" ]]; then
    echo "== base: $base_image is there, not made here (a registry's): used as it is"
elif [[ "$ours" != "$base_inputs" ]]; then
    echo "== base: made from other inputs than these; made again"
    timed base make_base
else
    echo "== base: $base_image made from these inputs already; kept"
fi

# ------------------------------------------------------------------------------ 2. our images
app_args=(--build-arg TORCH_VARIANT="$variant")
if [[ -d "$wheels" ]]; then
    app_args+=(--volume "$wheels:/wheels:ro" --build-arg WHEELS=/wheels)
fi
timed app "${build[@]}" "${app_args[@]}" -f docker/Dockerfile -t "$(qualified "$app_image")" .
timed mlflow "${build[@]}" -f docker/mlflow.Dockerfile -t "$(qualified "$mlflow_image")" .

# ------------------------------------------------------------------------------ 3. stand-ins
standin_args=(--build-arg PYTHON_IMAGE="$base_image" --label "gradreg.standin=$root")
timed postgres "${build[@]}" "${standin_args[@]}" -f docker/standins/postgres.Containerfile \
    -t "$(qualified "$postgres_image")" docker
timed minio "${build[@]}" "${standin_args[@]}" -f docker/standins/minio.Containerfile \
    -t "$(qualified "$minio_image")" docker

# ------------------------------------------------------------------------------ 4. smoke
smoke() {  # smoke ROLE IMAGE
    podman run --rm --pull=never --network=none --entrypoint /bin/bash \
        --volume "$root/docker/image-smoke.sh:/tmp/image-smoke.sh:ro" "$2" /tmp/image-smoke.sh "$1"
}
timed smoke-app smoke app "$(qualified "$app_image")"
timed smoke-mlflow smoke mlflow "$(qualified "$mlflow_image")"
timed smoke-postgres smoke postgres "$(qualified "$postgres_image")"
timed smoke-minio smoke minio "$(qualified "$minio_image")"

podman images --filter reference="$app_image" --filter reference="$mlflow_image" \
    --format '{{.Repository}}:{{.Tag}} {{.Size}}'
if [[ -n "${GRADREG_BUILD_TIMES:-}" ]]; then
    for name in "${!millis[@]}"; do echo "$name ${millis[$name]}"; done \
        | "$python" -c 'import json, sys; json.dump({k: int(v) / 1000 for k, v in (l.split() for l in sys.stdin)}, open(sys.argv[1], "w"), indent=1)' \
            "$GRADREG_BUILD_TIMES"
fi
