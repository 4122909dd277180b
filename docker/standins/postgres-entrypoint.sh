#!/usr/bin/env bash
# The official postgres image's entrypoint contract, as docker-compose.yml relies on it:
#  - PGDATA (/var/lib/postgresql/data, the volume) is made and owned by the postgres user,
#    and the server runs as that user;
#  - on an empty PGDATA only: initdb with POSTGRES_USER (default postgres) and
#    POSTGRES_PASSWORD (required), password (scram-sha-256) logins over TCP, trust on the Unix
#    socket; POSTGRES_DB (default: the user's name) created; then every file in
#    /docker-entrypoint-initdb.d in name order (*.sh run, or sourced when not executable;
#    *.sql through psql) against a server that listens on its Unix socket only;
#  - then `postgres` listening on every address.
# Not kept: POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD, *.sql.gz and the other
# compressed init files, the *_FILE variants of the variables.
set -Eeuo pipefail

if [[ "$(id -u)" == 0 ]]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [[ "${1:-}" == postgres && ! -s "$PGDATA/PG_VERSION" ]]; then
    : "${POSTGRES_PASSWORD:?the postgres stand-in needs POSTGRES_PASSWORD, as the official image does}"
    export POSTGRES_USER="${POSTGRES_USER:-postgres}"
    export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 -D "$PGDATA"
    printf '\nhost all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    if [[ "$POSTGRES_DB" != postgres ]]; then
        psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
            --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    for file in /docker-entrypoint-initdb.d/*; do
        case "$file" in
            *.sh)
                echo "running $file"
                if [[ -x "$file" ]]; then "$file"; else # shellcheck disable=SC1090
                    . "$file"; fi
                ;;
            *.sql)
                echo "running $file"
                psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -f "$file"
                ;;
            *) if [[ -e "$file" ]]; then echo "ignoring $file"; fi ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "PostgreSQL init process complete; ready for start up."
fi

if [[ "${1:-}" == postgres ]]; then
    shift
    exec postgres -c listen_addresses='*' "$@"
fi
exec "$@"
