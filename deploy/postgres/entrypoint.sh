#!/bin/sh
# First start: a cluster in $PGDATA with user and database `kodo`.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD (deploy/.env)}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pw=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pw"
  initdb -D "$PGDATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 --pwfile="$pw" >/dev/null
  rm -f "$pw"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  psql -v ON_ERROR_STOP=1 -q -U postgres -d postgres \
    -v pw="$POSTGRES_PASSWORD" <<'SQL'
CREATE USER kodo PASSWORD :'pw';
CREATE DATABASE kodo OWNER kodo;
SQL
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses='*'
