#!/bin/sh
# First start: a cluster, the service's role and database (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB), password
# logins from the containers' network. Then PostgreSQL in the foreground, so that SIGTERM stops it cleanly.
set -e
BIN=/usr/lib/postgresql/17/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  "$BIN/initdb" -D "$PGDATA" --auth-local=trust --auth-host=scram-sha-256 -U postgres >/dev/null
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  psql -v ON_ERROR_STOP=1 -U postgres -c "CREATE ROLE \"$POSTGRES_USER\" LOGIN PASSWORD '$POSTGRES_PASSWORD'" \
       -c "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\"" >/dev/null
  psql -v ON_ERROR_STOP=1 -U postgres -d "$POSTGRES_DB" -c "CREATE EXTENSION IF NOT EXISTS vector" >/dev/null
  "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*'
