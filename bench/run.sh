#!/usr/bin/env bash
# Benchmark absurd-orm (SQLite and PostgreSQL) against Absurd's Python SDK and DBOS on
# this machine, in one run, and write bench/results.md and bench/raw/*.json.
#
#   bash bench/run.sh                 # full run (30-60 min on 2 cores)
#   BENCH_QUICK=1 bash bench/run.sh   # tiny run, checks every code path
#
# Knobs (environment): BENCH_REPS, BENCH_N (W1 spawns and W2 tasks), BENCH_N_SPAWN,
# BENCH_N_E2E, BENCH_N_LAT, BENCH_N_EVT, BENCH_IDLE_GAP, BENCH_W2_POLL, BENCH_W5_ROWS,
# BENCH_W5_CLAIMS, BENCH_WORKLOADS (w1,w2,w3,w4,w5), BENCH_SYSTEMS (space separated:
# absurd-orm-sqlite absurd-orm-pg absurd-sdk-pg dbos-sqlite dbos-pg), BENCH_PG_PORT,
# BENCH_WORKDIR (/tmp/absurd-orm-bench), BENCH_OUT_DIR (bench/), BENCH_VENV, BENCH_NOTE.
# See bench/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
VENV=${BENCH_VENV:-/tmp/absurd-orm-bench-venv}

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# PostgreSQL binaries (initdb, pg_ctl) for the private server.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing PostgreSQL (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "PostgreSQL is not installed: install Debian's 'postgresql' package" >&2
    exit 1
  fi
fi

# The benchmark venv: pinned peers plus this checkout (editable).
if ! "$VENV/bin/python" -c "import absurd_sdk, absurdctl, dbos, psycopg, sqlalchemy" 2>/dev/null; then
  log "creating venv $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e "$REPO"
"$VENV/bin/python" -c "import absurd_orm, alembic" 2>/dev/null \
  || "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO"

cd "$REPO"
exec "$VENV/bin/python" -m bench.main
