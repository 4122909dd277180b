#!/usr/bin/env bash
# Each image's own check, run inside it by docker/build-local.sh with no network:
#   podman run --rm --network=none --entrypoint /bin/bash -v ./docker/image-smoke.sh:/s.sh:ro IMAGE /s.sh ROLE
# ROLE: app (docker/Dockerfile), mlflow (docker/mlflow.Dockerfile), postgres or minio (the
# stand-ins in docker/standins). It imports what the roles run, asks each entrypoint for its
# --help or its refusal without settings, and runs the role's healthcheck command against a
# server that answers and one that does not.
set -euo pipefail
role="${1:?usage: image-smoke.sh app|mlflow|postgres|minio}"

fails() {  # fails EXPECTED-TEXT COMMAND...: the command exits non-zero and says the text
    local out
    if out="$("${@:2}" 2>&1)"; then
        echo "smoke: '${*:2}' succeeded; it should have failed" >&2
        exit 1
    fi
    if [[ "$out" != *"$1"* ]]; then
        echo "smoke: '${*:2}' failed without saying '$1':" >&2
        echo "$out" >&2
        exit 1
    fi
}

wait_for() {  # wait_for SECONDS COMMAND...
    local deadline=$((SECONDS + $1))
    until "${@:2}" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            echo "smoke: '${*:2}' did not succeed within $1 s" >&2
            exit 1
        fi
        sleep 0.5
    done
}

probe_check() {  # the healthcheck command of our images: 2xx passes, nothing listening fails
    python -m http.server 8765 --bind 127.0.0.1 >/dev/null 2>&1 &
    local server=$!
    wait_for 30 gradreg-probe http://127.0.0.1:8765/
    fails "Connection refused" gradreg-probe http://127.0.0.1:8765/ http://127.0.0.1:1/
    fails usage gradreg-probe
    kill "$server"
}

case "$role" in
    app)
        [[ "$(id -u):$(id -g)" == 1000:1000 ]] || { echo "smoke: runs as $(id -u)" >&2; exit 1; }
        python - <<'PY'
import gradreg, sweeps.driver, service.app, service.worker  # noqa: F401  the three roles
import mlflow, optuna, psycopg, pyarrow.fs, ray, torch  # noqa: F401
print("python", __import__("sys").version.split()[0], "torch", torch.__version__,
      "CUDA", torch.version.cuda, "ray", ray.__version__, "mlflow", mlflow.__version__)
PY
        python -m gradreg --help >/dev/null
        python -m service serve --help >/dev/null
        ray start --help >/dev/null
        # Each role's entrypoint is installed and runs, and refuses to start without its settings.
        fails GRADREG_API_TOKENS gradreg-api
        fails RAY_AUTH_TOKEN_PATH gradreg-ray-head
        fails RAY_HEAD_ADDRESS gradreg-ray-worker
        touch /var/lib/gradreg/.smoke /data/.smoke  # the volumes' mount points are its own
        probe_check
        ;;
    mlflow)
        [[ "$(id -u):$(id -g)" == 1000:1000 ]] || { echo "smoke: runs as $(id -u)" >&2; exit 1; }
        python -c 'import boto3, mlflow.server, psycopg; print("mlflow", mlflow.__version__)'
        mlflow server --help >/dev/null
        probe_check
        ;;
    postgres)
        cat >/docker-entrypoint-initdb.d/10-smoke.sh <<'SH'
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -c 'CREATE DATABASE smoke'
SH
        POSTGRES_PASSWORD=smoke-password docker-entrypoint.sh postgres >/tmp/postgres.log 2>&1 &
        server=$!
        # compose's healthcheck, over TCP
        wait_for 60 pg_isready --host=127.0.0.1 --username=postgres --dbname=smoke
        # The init script ran, and TCP logins take the password.
        PGPASSWORD=smoke-password psql --host=127.0.0.1 --username=postgres --dbname=smoke \
            -tAc 'SELECT 1' | grep -qx 1
        kill -INT "$server"
        wait "$server"
        ;;
    minio)
        minio server /data --console-address :9001 >/tmp/minio.log 2>&1 &
        server=$!
        wait_for 60 mc ready local  # compose's healthcheck
        export MC_CONFIG_DIR=/tmp/mc
        mc alias set store http://127.0.0.1:9000 root root-password
        mc mb --ignore-existing store/smoke
        mc mb --ignore-existing store/smoke
        fails "mc mb: bucket smoke exists" mc mb store/smoke
        fails "docker/podman.yml" mc admin user add store key secret
        fails "only 'minio server DIR" minio gateway s3
        kill "$server"
        ;;
    *)
        echo "usage: image-smoke.sh app|mlflow|postgres|minio" >&2
        exit 2
        ;;
esac
echo "smoke: $role passed"
