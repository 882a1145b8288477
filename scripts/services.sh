#!/usr/bin/env bash
# Starts the servers the integration tests need, each on a free loopback
# port of its own, under one state directory, and prints the variables that
# point the tests at them (eval "$(scripts/services.sh start)"):
#
#   KLECTR_TEST_REDIS_URL    redis-server with AOF (appendfsync everysec) and
#                            4096 logical databases, one per test
#   KLECTR_TEST_MONGODB_URI  FerretDB v1.24.2 on a PostgreSQL cluster of its own
#   KLECTR_TEST_REDIS_BIN, KLECTR_TEST_FERRETDB_CMD   for fault tests that
#                            restart a server
#
# FerretDB is built from the Go module proxy once and cached in
# ${KLECTR_CACHE:-~/.cache/klectr}. `scripts/services.sh stop` stops all.
# Needs: redis-server, PostgreSQL's initdb/pg_ctl (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

FERRETDB_VERSION=v1.24.2
STATE=${KLECTR_SERVICES_DIR:-/tmp/klectr-services}
CACHE=${KLECTR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/klectr}

log() { printf '== %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

free_port() {
  python3 - 2>/dev/null <<'EOF' || echo $((20000 + RANDOM % 20000))
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
EOF
}

pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && { echo "$d"; return; }; done
  command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return; }
  return 1
}

ferretdb_bin() {
  local bin=$CACHE/ferretdb-$FERRETDB_VERSION
  if [ ! -x "$bin" ]; then
    log "building FerretDB $FERRETDB_VERSION (cached in $CACHE)"
    local dir src
    dir=$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    src=$(mktemp -d)
    cp -r "$dir/." "$src/"
    chmod -R u+w "$src"
    # A plain build panics at start without the version file.
    mkdir -p "$src/build/version"
    echo "$FERRETDB_VERSION" >"$src/build/version/version.txt"
    mkdir -p "$CACHE"
    (cd "$src" && GOFLAGS=-mod=mod go build -trimpath -o "$bin.tmp" ./cmd/ferretdb)
    mv "$bin.tmp" "$bin"
    rm -rf "$src"
  fi
  echo "$bin"
}

start_redis() {
  command -v redis-server >/dev/null || { log "installing Redis"; apt_install redis-server; }
  local port; port=$(free_port)
  mkdir -p "$STATE/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --databases 4096 \
    --appendonly yes --appendfsync everysec --save "" --dir "$STATE/redis" \
    --pidfile "$STATE/redis/pid" --logfile "$STATE/redis/log" >&2
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$port" ping >/dev/null
  echo "export KLECTR_TEST_REDIS_URL=redis://127.0.0.1:$port/0"
  echo "export KLECTR_TEST_REDIS_BIN=$(command -v redis-server)"
}

start_mongo() {
  local bin pgb pgport port dport
  bin=$(ferretdb_bin)
  pgb=$(pg_bin) || { log "installing PostgreSQL"; apt_install postgresql; pgb=$(pg_bin); }
  pgport=$(free_port); port=$(free_port); dport=$(free_port)
  local pgdata=$STATE/pg
  rm -rf "$pgdata"; mkdir -p "$pgdata"
  # initdb refuses to run as root: the cluster belongs to postgres.
  local run=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown -R postgres "$pgdata"
    run=(runuser -u postgres --)
  fi
  "${run[@]}" "$pgb/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 >/dev/null
  "${run[@]}" "$pgb/pg_ctl" -D "$pgdata" -w -l "$pgdata/log" \
    -o "-p $pgport -c listen_addresses=127.0.0.1 -k $pgdata -c fsync=off -c max_connections=300" start >&2
  "$pgb/psql" -h 127.0.0.1 -p "$pgport" -U postgres -qc 'create database ferretdb' >&2
  mkdir -p "$STATE/ferretdb"
  local cmd="$bin --handler=postgresql --postgresql-url=postgres://postgres@127.0.0.1:$pgport/ferretdb --listen-addr=127.0.0.1:$port --debug-addr=127.0.0.1:$dport --state-dir=$STATE/ferretdb --telemetry=disable --log-level=warn"
  nohup $cmd >"$STATE/ferretdb/log" 2>&1 &
  echo $! >"$STATE/ferretdb/pid"
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { cat "$STATE/ferretdb/log" >&2; return 1; }
  echo "$pgb/pg_ctl -D $pgdata -m immediate stop" >"$STATE/pg.stop"
  [ ${#run[@]} -eq 0 ] || echo "runuser -u postgres -- $pgb/pg_ctl -D $pgdata -m immediate stop" >"$STATE/pg.stop"
  echo "export KLECTR_TEST_MONGODB_URI=mongodb://127.0.0.1:$port/"
  echo "export KLECTR_TEST_FERRETDB_CMD='$cmd'"
}

stop_all() {
  [ -f "$STATE/redis/pid" ] && kill "$(cat "$STATE/redis/pid")" 2>/dev/null || true
  [ -f "$STATE/ferretdb/pid" ] && kill "$(cat "$STATE/ferretdb/pid")" 2>/dev/null || true
  [ -f "$STATE/pg.stop" ] && bash "$STATE/pg.stop" >/dev/null 2>&1 || true
  rm -f "$STATE/redis/pid" "$STATE/ferretdb/pid" "$STATE/pg.stop"
}

case "${1:-}" in
start)
  stop_all
  mkdir -p "$STATE"
  start_redis
  start_mongo
  ;;
stop) stop_all ;;
ferretdb-bin) ferretdb_bin ;;
*) echo "usage: $0 start|stop|ferretdb-bin" >&2; exit 2 ;;
esac
