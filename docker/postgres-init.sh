#!/usr/bin/env bash
# PostgreSQL's first start (empty volume) only: one role and one database each for the
# service's store and for MLflow. Passwords come from the environment, never from this file.
# A later password change needs ALTER ROLE; see docs/deploy.md.
set -euo pipefail

create_database() {
    local name="$1" password="$2"
    # psql quotes :"name" as an identifier and :'password' as a literal.
    psql --set=ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        --set=name="$name" --set=password="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
SQL
}

create_database gradreg "${GRADREG_DB_PASSWORD:?set GRADREG_DB_PASSWORD in .env}"
create_database mlflow "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in .env}"
