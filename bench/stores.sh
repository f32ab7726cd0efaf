#!/usr/bin/env bash
# The stores compared in one run (docs/BENCHMARKS.md, "Stores"): the warp baseline, the server on
# sled, on PostgreSQL with one instance, and on PostgreSQL with three instances on one database
# (three generators, a third of the connections each), for fetch, durable send and durable
# bundle pops. The sled runs and the baseline are repeated at the end, in reverse order, so that
# drift of the machine shows.
#
#   bash bench/stores.sh [OUTFILE]
#
# PostgreSQL: a throwaway cluster from tools/pg-test-cluster.sh (fsync on), a fresh database per
# scenario. BENCH_BEFORE=DIR adds a second sled server binary (DIR/signal-server, e.g. a release
# build of an older commit) measured beside this one. Knobs: BENCH_SECONDS (8), BENCH_WARMUP (2),
# BENCH_PG=0 to measure sled (and the baseline) only.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/dev/null}
SECS=${BENCH_SECONDS:-8}; WARMUP=${BENCH_WARMUP:-2}; CONNS=64
# Every load comes from this host: no per-address connection cap (older binaries ignore it).
export SIGNAL_SERVER_MAX_CONNECTIONS_PER_IP=0
cargo build --release -p loadgen
cargo build --release --example baseline
cargo build --release --bin signal-server
AFTER=${CARGO_TARGET_DIR:-$PWD/target}/release
BEFORE=${BENCH_BEFORE:-}
GEN=$AFTER/loadgen
WORK=$(mktemp -d /tmp/ab.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

start() { # start NAME CMD... -> sets PID URL
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PID=$!; PIDS+=("$PID")
  for i in $(seq 200); do
    URL=$(grep -o 'listening on http://[0-9.:]*' "$WORK/$name.log" | head -1 | sed 's/listening on //' || true)
    [[ -n "$URL" ]] && return 0
    sleep 0.1
  done
  cat "$WORK/$name.log"; exit 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

gen() { # gen TAG URL PID ARGS...
  local tag=$1 url=$2 pid=$3; shift 3
  timeout 600 "$GEN" --url "$url" --server-pid "$pid" --seconds "$SECS" --warmup "$WARMUP" "$@" \
    | sed -n "s/^RESULT /RESULT target=$tag /p" | tee -a "$OUT"
}

server() { # server TAG BIN SCENARIO [--database-url URL]
  local tag=$1 bin=$2 scenario=$3; shift 3
  mkdir -p "$WORK/$tag-$scenario"
  start "$tag-$scenario" "$bin/signal-server" --data-dir "$WORK/$tag-$scenario" --listen 127.0.0.1:0 \
    --no-rate-limit --pbkdf2-iterations 1000 --max-queued-messages 10000000 --max-prekeys 1000 "$@"
}

scenario_args() {
  case $1 in
    fetch) echo "--connections $CONNS --scenario fetch" ;;
    send) echo "--connections $CONNS --scenario send --users 64" ;;
    bundle) echo "--connections $CONNS --scenario bundle --targets 64 --prekeys-per-target 1000" ;;
  esac
}

baseline() {
  start baseline "$AFTER/examples/baseline" --listen 127.0.0.1:0
  gen baseline "$URL" "$PID" --connections $CONNS --scenario fetch --no-setup
  stop "$PID"
}

sled_round() { # sled_round ORDER...
  for who in "$@"; do
    case $who in
      baseline) baseline ;;
      before|after)
        [[ $who == before && -z "$BEFORE" ]] && continue
        local bin=$BEFORE; [[ $who == after ]] && bin=$AFTER
        local tag=sled; [[ $who == before ]] && tag=sled-before
        for s in fetch send bundle; do
          server "$tag" "$bin" "$s"
          # shellcheck disable=SC2046
          gen "$tag" "$URL" "$PID" $(scenario_args $s)
          stop "$PID"
        done ;;
    esac
  done
}

if [[ ${BENCH_PG:-1} == 0 ]]; then
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"
  sled_round baseline before after
  sled_round after before baseline
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"
  exit 0
fi

eval "$(bash tools/pg-test-cluster.sh start 2>/dev/null)"
BASEURL=${SIGNAL_SERVER_TEST_DATABASE_URL%/postgres}
pgstop() { bash tools/pg-test-cluster.sh stop "$PG_TEST_CLUSTER_DIR" 2>/dev/null; }
trap 'cleanup; pgstop' EXIT
trap 'exit 130' INT TERM
# A new, empty database; its URL. (Called in $(...): no counter survives the subshell.)
newdb() {
  local name="bench_$(date +%s%N)"
  psql -q "$SIGNAL_SERVER_TEST_DATABASE_URL" -c "CREATE DATABASE $name" >&2
  echo "$BASEURL/$name"
}

pg_one() {
  for s in fetch send bundle; do
    local db; db=$(newdb)
    server pg1 "$AFTER" "$s" --database-url "$db"
    # shellcheck disable=SC2046
    gen pg1 "$URL" "$PID" $(scenario_args $s)
    stop "$PID"
  done
}

pg_three() {
  for s in fetch send bundle; do
    local db urls=() pids=(); db=$(newdb)
    for i in 1 2 3; do
      server "pg3-$i" "$AFTER" "$s-$i" --database-url "$db"
      urls+=("$URL"); pids+=("$PID")
    done
    # shellcheck disable=SC2046
    local args; args=$(scenario_args $s | sed "s/--connections $CONNS/--connections 22/; s/--users 64/--users 22/; s/--targets 64/--targets 22/")
    local gens=()
    for i in 0 1 2; do
      # shellcheck disable=SC2086
      gen "pg3-$((i+1))" "${urls[$i]}" "${pids[$i]}" $args &
      gens+=($!)
    done
    wait "${gens[@]}"
    for p in "${pids[@]}"; do stop "$p"; done
  done
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"
sled_round baseline before after
pg_one
pg_three
sled_round after before baseline
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"
