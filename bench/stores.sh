#!/usr/bin/env bash
# The stores compared in one run (docs/BENCHMARKS.md, "Stores"): the warp baseline, the server on
# sled, on PostgreSQL with one instance, and on PostgreSQL with three instances on one database
# (three generators, a third of the connections each), for fetch, durable send, durable bundle
# pops and health; on PostgreSQL also `pgbench -S -M prepared` against the same cluster, the
# database's own ceiling for a read (the fetch's target is 0.6 of it). With BENCH_BEFORE, every
# one-instance arm (sled and PostgreSQL) runs an older binary too.
#
#   bash bench/stores.sh [OUTFILE]
#
# Order: baseline, before, after, then (PostgreSQL) before, after, pgbench, three instances,
# after, before, then (sled) after, before, baseline: each pair runs once in each order, so a
# linear drift of the machine cancels in its mean. Ends with a Markdown table (each row the
# mean of its runs; ratio = that over the mean of the baseline's fetch runs).
#
# PostgreSQL: a throwaway cluster from tools/pg-test-cluster.sh (fsync on), a fresh database per
# scenario and one for pgbench (`pgbench -i -s 10`). Knobs (environment):
#   BENCH_SECONDS (8), BENCH_WARMUP (2), BENCH_PG=0 (sled and the baseline only),
#   BENCH_SCENARIOS ("fetch send bundle health": any of them, run in the order given),
#   BENCH_BEFORE=DIR (DIR/signal-server, e.g. a release build of an older commit),
#   BENCH_AFTER=DIR (prebuilt signal-server, loadgen and baseline, in DIR or DIR/examples;
#     default: cargo build --release), BENCH_LOADGEN=FILE (another generator binary).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/dev/null}
SECS=${BENCH_SECONDS:-8}; WARMUP=${BENCH_WARMUP:-2}; CONNS=64
SCENARIOS=${BENCH_SCENARIOS:-fetch send bundle health}
for s in $SCENARIOS; do
  case $s in fetch|send|bundle|health) ;; *) echo "unknown scenario in BENCH_SCENARIOS: $s" >&2; exit 2 ;; esac
done
# Every load comes from this host: no per-address connection cap (older binaries ignore it).
export SIGNAL_SERVER_MAX_CONNECTIONS_PER_IP=0
if [[ -n "${BENCH_AFTER:-}" ]]; then
  AFTER=$BENCH_AFTER
else
  cargo build --release -p loadgen
  cargo build --release --example baseline
  cargo build --release --bin signal-server
  AFTER=${CARGO_TARGET_DIR:-$PWD/target}/release
fi
bin_in() { # bin_in DIR NAME: DIR/NAME or DIR/examples/NAME
  if [[ -x "$1/$2" ]]; then echo "$1/$2"; elif [[ -x "$1/examples/$2" ]]; then echo "$1/examples/$2"
  else echo "no $2 in $1" >&2; exit 2; fi
}
BASELINE=$(bin_in "$AFTER" baseline)
GEN=${BENCH_LOADGEN:-$(bin_in "$AFTER" loadgen)}
BEFORE=${BENCH_BEFORE:-}
BEFORE_PG=
if [[ -n "$BEFORE" ]]; then
  if "$BEFORE/signal-server" --help | grep -q -- --database-url; then BEFORE_PG=1
  else echo "$BEFORE/signal-server has no --database-url: no PostgreSQL before arm" >&2; fi
fi
WORK=$(mktemp -d /tmp/ab.XXXXXX)
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

start() { # start NAME CMD... -> sets PID URL
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PID=$!
  ln -sf "$WORK/$name.log" "$WORK/$PID.log"
  for _ in $(seq 200); do
    URL=$(grep -o 'listening on http://[0-9.:]*' "$WORK/$name.log" | head -1 | sed 's/listening on //' || true)
    [[ -n "$URL" ]] && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$WORK/$name.log" >&2; echo "$name did not start" >&2; exit 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# gen TAG URL PID ARGS...: one generator run; a failed one is reported with the end of the
# server's log and the run goes on.
gen() {
  local tag=$1 url=$2 pid=$3 rc=0; shift 3
  timeout 600 "$GEN" --url "$url" --server-pid "$pid" --seconds "$SECS" --warmup "$WARMUP" "$@" \
    >"$WORK/$tag.out" || rc=$?
  sed -n "s/^RESULT /RESULT target=$tag /p" "$WORK/$tag.out" | tee -a "$OUT" "$RESULTS"
  if ((rc != 0)); then
    echo "FAILED target=$tag $*: generator exit $rc; the server's log ends:" | tee -a "$OUT" >&2
    tail -20 "$WORK/$pid.log" >&2
  fi
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
    health) echo "--connections $CONNS --scenario health" ;;
  esac
}

baseline() {
  start baseline "$BASELINE" --listen 127.0.0.1:0
  gen baseline "$URL" "$PID" --connections $CONNS --scenario fetch --no-setup
  if [[ " $SCENARIOS " == *" health "* ]]; then
    gen baseline "$URL" "$PID" --connections $CONNS --scenario health
  fi
  stop "$PID"
}

# one STORE WHO: every scenario on one fresh server (a fresh data dir, or database), STORE = sled
# or pg1, WHO = before or after (before is skipped without BENCH_BEFORE).
one() {
  local store=$1 who=$2 bin=$AFTER tag=$1-$2 s db
  if [[ $who == before ]]; then
    [[ -n "$BEFORE" ]] || return 0
    [[ $store == sled || -n "$BEFORE_PG" ]] || return 0
    bin=$BEFORE
  fi
  for s in $SCENARIOS; do
    if [[ $store == sled ]]; then
      server "$tag" "$bin" "$s"
    else
      db=$(newdb); server "$tag" "$bin" "$s" --database-url "$db"
    fi
    # shellcheck disable=SC2046
    gen "$tag" "$URL" "$PID" $(scenario_args "$s")
    stop "$PID"
  done
}

# A new, empty database (named $1, or a fresh name); its URL.
newdb() {
  local name=${1:-bench_$(date +%s%N)}
  psql -q "$SIGNAL_SERVER_TEST_DATABASE_URL" -c "CREATE DATABASE $name" >&2
  echo "$BASEURL/$name"
}

pg_three() {
  local s db args i p
  for s in $SCENARIOS; do
    local urls=() pids=() gens=()
    db=$(newdb)
    for i in 1 2 3; do
      server "pg3-$i" "$AFTER" "$s-$i" --database-url "$db"
      urls+=("$URL"); pids+=("$PID")
    done
    args=$(scenario_args "$s" | sed "s/--connections $CONNS/--connections 22/; s/--users 64/--users 22/; s/--targets 64/--targets 22/")
    for i in 0 1 2; do
      # shellcheck disable=SC2086
      gen "pg3-$((i+1))" "${urls[$i]}" "${pids[$i]}" $args &
      gens+=($!)
    done
    wait "${gens[@]}"
    for p in "${pids[@]}"; do stop "$p"; done
  done
}

# pgbench -S -M prepared at the benchmark's connections on its own database: the cluster's rate
# of single-row primary-key reads, the ceiling a fetch (three such reads) is held against.
pgbench_run() {
  local bin db out tps lat failed
  bin=$(command -v pgbench || true)
  for db in /usr/lib/postgresql/*/bin/pgbench; do [[ -x "$db" ]] && bin=$db; done
  db=$(newdb pgbench_db)
  "$bin" -i -s 10 -q "$db" >"$WORK/pgbench-init.log" 2>&1 || { cat "$WORK/pgbench-init.log" >&2; exit 1; }
  "$bin" -S -M prepared -c $CONNS -j 2 -T "$WARMUP" "$db" >/dev/null 2>&1
  out=$("$bin" -S -M prepared -c $CONNS -j 2 -T "$SECS" "$db" 2>&1) || { echo "$out" >&2; exit 1; }
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | tail -1)
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
  echo "RESULT target=pgbench scenario=select rps=$tps p50_ms=- p99_ms=- p999_ms=- non2xx=${failed:-0} lat_avg_ms=$lat seconds=$SECS connections=$CONNS" \
    | tee -a "$OUT" "$RESULTS"
}

# The table: one row per target and scenario, the mean of its runs (the three instances'
# generators summed); p99 the worst of its runs.
table() {
  awk '
    /^RESULT / {
      delete f
      for (i = 2; i <= NF; i++) { j = index($i, "="); f[substr($i, 1, j - 1)] = substr($i, j + 1) }
      t = f["target"]; s = f["scenario"]
      if (t ~ /^pg3-/) t = "pg3-after (sum of 3)"
      k = t SUBSEP s
      if (!(k in n)) { order[++rows] = k; n[k] = 0; sum[k] = 0; worst[k] = "-" }
      sum[k] += f["rps"]
      if (t ~ /^pg3/) { n[k] = 1; runs[k] = sprintf("%.0f", sum[k]) }
      else { n[k]++; runs[k] = runs[k] (n[k] > 1 ? " / " : "") sprintf("%.0f", f["rps"]) }
      p = f["p99_ms"]
      if (p != "-" && (worst[k] == "-" || p + 0 > worst[k] + 0)) worst[k] = p
      if (t == "baseline" && s == "fetch") { bsum += f["rps"]; bn++ }
    }
    END {
      base = bn ? bsum / bn : 0
      print "| target | scenario | req/s | runs | ratio to baseline fetch | p99 ms |"
      print "|---|---|---:|---|---:|---:|"
      for (r = 1; r <= rows; r++) {
        split(order[r], ts, SUBSEP); k = order[r]; mean = sum[k] / n[k]
        ratio = base ? sprintf("%.3f", mean / base) : "-"
        printf "| %s | %s | %.0f | %s | %s | %s |\n", ts[1], ts[2], mean, runs[k], ratio, worst[k]
        if (ts[1] == "pgbench") pgb = mean
        if (ts[2] == "fetch" && ts[1] ~ /^pg1-/) { fetch[++nf] = ts[1]; frate[nf] = mean }
      }
      printf "\nratio: over the mean of %d baseline fetch runs (%.0f req/s)\n", bn, base
      for (j = 1; j <= nf && pgb > 0; j++)
        printf "fetch / pgbench -S (%s): %.3f (target >= 0.6)\n", fetch[j], frate[j] / pgb
    }' "$RESULTS"
}

round() { # round ARM...: ARM = baseline, or STORE-WHO (sled-after, pg1-before, ...)
  local arm
  for arm in "$@"; do
    case $arm in
      baseline) baseline ;;
      *) one "${arm%-*}" "${arm##*-}" ;;
    esac
  done
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"
if [[ ${BENCH_PG:-1} == 0 ]]; then
  round baseline sled-before sled-after sled-after sled-before baseline
else
  pgenv=$(bash tools/pg-test-cluster.sh start 2>"$WORK/pg.log") || { cat "$WORK/pg.log" >&2; exit 1; }
  eval "$pgenv"
  PG_DIR=$PG_TEST_CLUSTER_DIR
  BASEURL=${SIGNAL_SERVER_TEST_DATABASE_URL%/postgres}
  round baseline sled-before sled-after pg1-before pg1-after
  pgbench_run
  pg_three
  round pg1-after pg1-before sled-after sled-before baseline
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"
echo
table | tee -a "$OUT"
