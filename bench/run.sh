#!/usr/bin/env bash
# The benchmark of docs/BENCHMARKS.md, in one command: `bash bench/run.sh`.
#
# Builds release once, then on loopback only:
#   1. the baseline (examples/baseline.rs, a minimal warp server): fetch-equivalent and health;
#   2. signal-server, a fresh data dir per scenario, --no-rate-limit: fetch, health, send, bundle,
#      login (default PBKDF2), ws;
#   3. peak RSS (VmHWM) of a fresh signal-server while 100k messages are queued by `send` and
#      then drained (GET ?limit=1000 + DELETE);
# and prints a table: req/s, p50/p99/p999, non-2xx, and the ratio to the baseline's fetch.
#
# Knobs (environment): BENCH_SECONDS (measured seconds per run, default 10), BENCH_WARMUP (2),
# BENCH_CONNECTIONS (64), BENCH_RSS_MESSAGES (100000), BENCH_LOG (keep the raw output there).
# Everything started here is killed on exit; each generator run is cut off after 300 s.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNECTIONS:-64}
# Every load comes from this host: no per-address connection cap (older binaries ignore it).
export SIGNAL_SERVER_MAX_CONNECTIONS_PER_IP=0
RSS_MESSAGES=${BENCH_RSS_MESSAGES:-100000}
BIN=target/release
WORK=$(mktemp -d "${TMPDIR:-/tmp}/signal-bench.XXXXXX")
RESULTS=$WORK/results.txt

cleanup() {
    local running
    running=$(jobs -p)
    if [[ -n "$running" ]]; then
        # shellcheck disable=SC2086
        kill $running 2>/dev/null || true
        # shellcheck disable=SC2086
        wait $running 2>/dev/null || true
    fi
    if [[ -n "${BENCH_LOG:-}" && -f "$RESULTS" ]]; then
        cp "$RESULTS" "$BENCH_LOG"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "== $*" >&2; }

# start NAME CMD...: runs CMD in the background (log in $WORK/NAME.log), waits for its
# "listening on http://ADDR" line, sets PID and URL.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PID=$!
    local i
    for i in $(seq 100); do
        URL=$(grep -o 'listening on http://[0-9.:]*' "$WORK/$name.log" | head -1 | sed 's/listening on //' || true)
        if [[ -n "$URL" ]]; then
            return 0
        fi
        if ! kill -0 "$PID" 2>/dev/null; then
            cat "$WORK/$name.log" >&2
            echo "$name did not start" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$name did not start listening in 10 s" >&2
    exit 1
}

# stop PID: SIGTERM, then SIGKILL after 10 s.
stop() {
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# server NAME FLAGS...: a fresh signal-server with its own data dir.
server() {
    local name=$1
    shift
    mkdir -p "$WORK/$name-data"
    start "$name" "$BIN/signal-server" --data-dir "$WORK/$name-data" --listen 127.0.0.1:0 \
        --no-rate-limit "$@"
}

# loadgen ARGS...: one bounded run of the generator against $URL (the server $PID), in the
# background so that a signal reaches the trap at once; its RESULT lines are printed and kept,
# labelled with $TAG.
loadgen() {
    timeout 300 "$BIN/loadgen" --url "$URL" --server-pid "$PID" "$@" >"$WORK/out.txt" &
    wait $!
    cat "$WORK/out.txt" >>"$WORK/raw.txt"
    sed -n "s/^RESULT /RESULT target=$TAG /p" "$WORK/out.txt" | tee -a "$RESULTS"
}

# run ARGS...: a timed run at the benchmark's connections, seconds and warmup.
run() {
    loadgen --connections "$CONNS" --seconds "$SECS" --warmup "$WARMUP" "$@"
}

hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
    "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
log "load before the build: $(cut -d' ' -f1-3 /proc/loadavg)"
# The generator (its own crate, bench/loadgen) and the baseline first, the server last: the
# server binary is built without the `client` feature the other two turn on.
cargo build --release -p loadgen
cargo build --release --example baseline
cargo build --release --bin signal-server
log "load before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
START=$(date +%s)

# 1. Baseline.
TAG=baseline
start baseline "$BIN/examples/baseline" --listen 127.0.0.1:0
log "baseline at $URL"
run --scenario fetch --no-setup
run --scenario health
stop "$PID"

# 2. signal-server. PBKDF2 at 1000 iterations only where the run creates many users (it only
# costs setup time: the measured requests authenticate with JWTs); `login` keeps the default.
TAG=server
server fetch --pbkdf2-iterations 1000
log "signal-server (fetch, health) at $URL"
run --scenario fetch
run --scenario health
stop "$PID"

server send --pbkdf2-iterations 1000 --max-queued-messages 10000000
log "signal-server (send) at $URL"
run --scenario send --users 64
stop "$PID"

# 64 targets x 1000 one-time EC + 1000 Kyber prekeys; the run stops early if the stock is used
# up, so every measured answer popped a key (see with_prekey=).
server bundle --pbkdf2-iterations 1000 --max-prekeys 1000
log "signal-server (bundle) at $URL"
run --scenario bundle --targets 64 --prekeys-per-target 1000
stop "$PID"

server login
log "signal-server (login, default PBKDF2) at $URL"
run --scenario login --side-connections 4 --side-rate 200
stop "$PID"

server ws --pbkdf2-iterations 1000 --max-queued-messages 10000000
log "signal-server (ws) at $URL"
run --scenario ws --ws-clients 64
stop "$PID"

# 3. Peak RSS with 100k queued messages.
server rss --pbkdf2-iterations 1000 --max-queued-messages 10000000
log "signal-server (RSS: $RSS_MESSAGES messages queued, then drained) at $URL"
IDLE_KB=$(hwm_kb "$PID")
TAG=rss
# The fill stops after 180 s even if fewer messages are queued by then (see `requests=`).
loadgen --connections "$CONNS" --scenario send --users 64 --warmup 0 --seconds 180 \
    --total "$RSS_MESSAGES" --drain
PEAK_KB=$(hwm_kb "$PID")
END_KB=$(rss_kb "$PID")
DATA_SIZE=$(du -sh "$WORK/rss-data" | cut -f1)
stop "$PID"
QUEUED=$(grep '^RESULT target=rss scenario=send ' "$RESULTS" | tr ' ' '\n' | sed -n 's/^requests=//p')
echo "RSS idle_hwm_kb=$IDLE_KB peak_hwm_kb=$PEAK_KB end_rss_kb=$END_KB messages=$QUEUED data_dir=$DATA_SIZE" \
    | tee -a "$RESULTS"
log "runs took $(($(date +%s) - START)) s; load now: $(cut -d' ' -f1-3 /proc/loadavg)"

# The table.
field() { # field TARGET SCENARIO KEY
    grep "^RESULT target=$1 scenario=$2 " "$RESULTS" | head -1 | tr ' ' '\n' | sed -n "s/^$3=//p"
}
BASE=$(field baseline fetch rps)
echo
echo "| target | scenario | req/s | p50 ms | p99 ms | p999 ms | non-2xx | ratio to baseline fetch | CPU % server / loadgen / rest | notes |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
row() { # row TARGET SCENARIO NOTE [noratio]
    local rps ratio cpu server gen machine
    rps=$(field "$1" "$2" rps)
    [[ -n "$rps" ]] || return 0
    ratio=$(awk -v a="$rps" -v b="$BASE" 'BEGIN {printf "%.3f", a / b}')
    [[ "${4:-}" != noratio ]] || ratio=-
    server=$(field "$1" "$2" server_cpu_pct)
    gen=$(field "$1" "$2" loadgen_cpu_pct)
    machine=$(field "$1" "$2" machine_cpu_pct)
    cpu=-
    if [[ -n "$server" && -n "$machine" && "$server$gen$machine" != *-* ]]; then
        cpu="$server / $gen / $((machine - server - gen))"
    fi
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$rps" \
        "$(field "$1" "$2" p50_ms)" "$(field "$1" "$2" p99_ms)" "$(field "$1" "$2" p999_ms)" \
        "$(field "$1" "$2" non2xx)" "$ratio" "$cpu" "$3"
}
row baseline fetch "GET /messages/<u64> with a Bearer string check"
row baseline health ""
row server fetch "target >= 0.60"
row server health ""
row server send "durable; target >= 0.15"
row server bundle "durable pop; target >= 0.15; $(field server bundle with_prekey) of $(field server bundle requests) with a preKey"
row server login "$(field server login of_ceiling) of ceiling $(field server login ceiling_rps)/s (hash $(field server login hash_ms) ms); target >= 0.80" noratio
row server login_side "paced $(field server login_side rate)/s during login; target p99 < 10 ms" noratio
row server ws "delivery latency; posted $(field server ws posted), received live $(field server ws received)"
row server ws_send "the POSTs of ws"
row rss send "filling $QUEUED messages"
row rss drain "$(field rss drain messages) messages at $(field rss drain messages_per_s)/s; a request is a GET of 1000 or a DELETE of 1000" noratio
echo
echo "CPU: % of one core in the measured window ($(nproc) cores = $(($(nproc) * 100)) %); rest = the"
echo "machine's busy time minus server and loadgen: kernel loopback work (softirq) and other load."
echo "Peak RSS (VmHWM) of signal-server: idle $((IDLE_KB / 1024)) MiB; $QUEUED messages queued and drained: $((PEAK_KB / 1024)) MiB (RSS at the end $((END_KB / 1024)) MiB, data dir $DATA_SIZE)."
