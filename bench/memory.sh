#!/usr/bin/env bash
# The server's memory (docs/BENCHMARKS.md, "Memory"), on sled and on PostgreSQL: VmRSS (settled)
# and VmHWM (peak) from /proc/<pid>/status of a fresh server
#   queued:  idle, then after `send` of exactly BENCH_MESSAGES messages (64 connections, 64
#            recipients) and BENCH_SETTLE seconds;
#   idle-ws: with BENCH_SOCKETS users (one device each), then with a WebSocket open per device,
#            all idle for BENCH_HOLD seconds (`loadgen --scenario idle-ws`).
#
#   bash bench/memory.sh [OUTFILE]
#
# Knobs (environment): BENCH_MESSAGES (100000), BENCH_SOCKETS (10000), BENCH_HOLD (10),
# BENCH_SETTLE (5), BENCH_PG=0 (sled only), BENCH_AFTER=DIR (prebuilt signal-server and loadgen;
# default: cargo build --release), BENCH_LOADGEN=FILE (another generator binary).
# PostgreSQL: a throwaway cluster from tools/pg-test-cluster.sh, a fresh database per case; only
# the server's memory is measured, not PostgreSQL's.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/dev/null}
MESSAGES=${BENCH_MESSAGES:-100000}; SOCKETS=${BENCH_SOCKETS:-10000}
HOLD=${BENCH_HOLD:-10}; SETTLE=${BENCH_SETTLE:-5}
# Every socket comes from this host: no per-address cap; the global cap (0) is whatever the
# open-file limit allows, and that limit is raised as far as it goes for the server and us.
export SIGNAL_SERVER_MAX_CONNECTIONS_PER_IP=0 SIGNAL_SERVER_MAX_CONNECTIONS=0
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < SOCKETS + 1000)); then
  echo "open-file limit $(ulimit -n) is too low for $SOCKETS sockets" >&2; exit 2
fi
if [[ -n "${BENCH_AFTER:-}" ]]; then
  BIN=$BENCH_AFTER
else
  cargo build --release -p loadgen
  cargo build --release --bin signal-server
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
fi
GEN=${BENCH_LOADGEN:-$BIN/loadgen}
"$GEN" --help | grep -q idle-ws || { echo "$GEN has no idle-ws scenario" >&2; exit 2; }
WORK=$(mktemp -d /tmp/mem.XXXXXX)
RESULTS=$WORK/results.txt
PG_DIR=
cleanup() {
  local p
  for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -n "$PG_DIR" ]]; then bash tools/pg-test-cluster.sh stop "$PG_DIR" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# server NAME [--database-url URL]: a fresh server; sets PID and URL.
server() {
  local name=$1; shift
  mkdir -p "$WORK/$name"
  "$BIN/signal-server" --data-dir "$WORK/$name" --listen 127.0.0.1:0 --no-rate-limit \
    --pbkdf2-iterations 1000 --max-queued-messages 10000000 "$@" >"$WORK/$name.log" 2>&1 &
  PID=$!
  for _ in $(seq 200); do
    URL=$(grep -o 'listening on http://[0-9.:]*' "$WORK/$name.log" | head -1 | sed 's/listening on //' || true)
    [[ -n "$URL" ]] && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$WORK/$name.log" >&2; echo "$name did not start" >&2; exit 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; } # kb PID VmRSS|VmHWM
# A field of the generator's RESULT line.
field() { tr ' ' '\n' <"$WORK/gen.txt" | sed -n "s/^$1=//p" | head -1; }

# gen TAG ARGS...: the generator against $URL/$PID, its RESULT lines labelled and kept.
gen() {
  local tag=$1; shift
  timeout 1800 "$GEN" --url "$URL" --server-pid "$PID" "$@" >"$WORK/gen.txt" &
  wait $!
  sed -n "s/^RESULT /RESULT target=$tag /p" "$WORK/gen.txt" | tee -a "$OUT" "$RESULTS"
}

# queued STORE [--database-url URL]
queued() {
  local store=$1 idle queued; shift
  server "$store-queued" "$@"
  sleep 1
  idle=$(kb "$PID" VmRSS)
  gen "$store" --scenario send --connections 64 --users 64 --warmup 0 --seconds 1200 --total "$MESSAGES"
  queued=$(field requests)
  sleep "$SETTLE"
  echo "RESULT target=$store scenario=queued count=$queued idle_rss_kb=$idle base_rss_kb=$idle rss_kb=$(kb "$PID" VmRSS) hwm_kb=$(kb "$PID" VmHWM)" \
    | tee -a "$OUT" "$RESULTS"
  stop "$PID"
}

# sockets STORE [--database-url URL]
sockets() {
  local store=$1 idle; shift
  server "$store-ws" "$@"
  local cap
  cap=$(grep -o 'at most [0-9]* open connections' "$WORK/$store-ws.log" | tr -dc 0-9)
  if [[ -n "$cap" ]] && ((cap < SOCKETS + 64)); then
    echo "the server allows only $cap connections" >&2; exit 1
  fi
  sleep 1
  idle=$(kb "$PID" VmRSS)
  gen "$store" --scenario idle-ws --sockets "$SOCKETS" --connections 64 --hold "$HOLD"
  echo "RESULT target=$store scenario=idle-ws count=$(field open) idle_rss_kb=$idle base_rss_kb=$(field server_rss_before_kb) rss_kb=$(field server_rss_kb) hwm_kb=$(field server_hwm_kb)" \
    | tee -a "$OUT" "$RESULTS"
  stop "$PID"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"
queued sled
sockets sled
if [[ ${BENCH_PG:-1} != 0 ]]; then
  pgenv=$(bash tools/pg-test-cluster.sh start 2>"$WORK/pg.log") || { cat "$WORK/pg.log" >&2; exit 1; }
  eval "$pgenv"
  PG_DIR=$PG_TEST_CLUSTER_DIR
  base=${SIGNAL_SERVER_TEST_DATABASE_URL%/postgres}
  for case in queued sockets; do
    db=bench_$case
    psql -q "$SIGNAL_SERVER_TEST_DATABASE_URL" -c "CREATE DATABASE $db"
    "$case" pg --database-url "$base/$db"
  done
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"

# The table: MiB, and KiB per message or socket over the server before them (idle, or with the
# sockets' users created).
echo | tee -a "$OUT"
awk '
  BEGIN {
    print "| store | case | count | idle VmRSS MiB | before VmRSS MiB | settled VmRSS MiB | peak VmHWM MiB | KiB per item |"
    print "|---|---|---:|---:|---:|---:|---:|---:|"
  }
  /^RESULT / && / count=/ {
    delete f
    for (i = 2; i <= NF; i++) { j = index($i, "="); f[substr($i, 1, j - 1)] = substr($i, j + 1) }
    per = f["count"] > 0 ? sprintf("%.1f", (f["rss_kb"] - f["base_rss_kb"]) / f["count"]) : "-"
    printf "| %s | %s | %d | %.0f | %.0f | %.0f | %.0f | %s |\n", f["target"], f["scenario"], f["count"],
      f["idle_rss_kb"] / 1024, f["base_rss_kb"] / 1024, f["rss_kb"] / 1024, f["hwm_kb"] / 1024, per
  }' "$RESULTS" | tee -a "$OUT"
