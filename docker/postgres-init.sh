#!/bin/sh
# Runs once, when the postgres-data volume is empty (the postgres image's
# /docker-entrypoint-initdb.d/). One role and one database per server, each owning its own:
#   prefect  (password PG_PREFECT_PASSWORD)  for the Prefect server
#   mlflow   (password PG_MLFLOW_PASSWORD)   for the MLflow tracking server
# The passwords go to psql as variables (:'name' quotes them), never into the SQL text.
# To change a password later: ALTER ROLE ... PASSWORD in psql, then docker/.env, then restart.
# No `set -eu`: the entrypoint sources this file when it is not executable, and those options
# would leak into it; psql's ON_ERROR_STOP and the exit status of this last command suffice.

: "${PG_PREFECT_PASSWORD:?set PG_PREFECT_PASSWORD in docker/.env}"
: "${PG_MLFLOW_PASSWORD:?set PG_MLFLOW_PASSWORD in docker/.env}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
     -v prefect_password="$PG_PREFECT_PASSWORD" -v mlflow_password="$PG_MLFLOW_PASSWORD" <<'SQL'
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
\connect prefect
-- Prefect's migrations create this extension; created here by the superuser, once.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
SQL
