#!/usr/bin/env bash
# Attachment throughput and memory (docs/BENCHMARKS.md, "Attachments"), in one run on one disk:
#   1. `dd conv=fsync` of a 100 MiB file into the data dir's filesystem: what the disk gives;
#   2. one TUS upload of the same 100 MiB (one PATCH, streamed by curl) and its download;
#   3. the server's resident memory idle, then at its peak while 10 uploads of 100 MiB run at once.
# Each of 1 and 2 runs RUNS times (median, min, max printed). The data dir is a fresh directory
# under BENCH_DIR (default: a temp dir under /var/tmp, a disk, not /tmp's tmpfs on some hosts).
#
#   bash bench/attachments.sh [OUTFILE]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/dev/null}
RUNS=${BENCH_RUNS:-5}
MIB=100
cargo build --release --bin signal-server
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/signal-server
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/att.XXXXXX")
PID=
cleanup() { [[ -n "$PID" ]] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

head -c $((MIB << 20)) /dev/urandom > "$WORK/src.bin"
SUM=$(sha256sum "$WORK/src.bin" | cut -d' ' -f1)

"$BIN" --data-dir "$WORK/data" --listen 127.0.0.1:0 --no-rate-limit --pbkdf2-iterations 1000 \
  --max-connections-per-ip 0 >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do
  URL=$(grep -o 'listening on http://[0-9.:]*' "$WORK/server.log" | head -1 | sed 's/listening on //' || true)
  [[ -n "$URL" ]] && break
  sleep 0.1
done
[[ -n "$URL" ]] || { cat "$WORK/server.log"; exit 1; }
json='-H content-type:application/json'
curl -sf $json -d '{"username":"bench","password":"tangerine-Voyage-42"}' "$URL/auth/users" >/dev/null
TOKEN=$(curl -sf $json -d '{"username":"bench","password":"tangerine-Voyage-42"}' "$URL/auth/jwt/create" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
AUTH="Authorization: Bearer $TOKEN"
TUS="Tus-Resumable: 1.0.0"

now() { date +%s.%N; }
mibs() { python3 -c "print(f'{$MIB / ($2 - $1):.0f}')"; }
stats() { python3 -c "import statistics,sys; v=sorted(map(float,sys.argv[1:])); print(f'median {statistics.median(v):.0f} MiB/s (min {v[0]:.0f}, max {v[-1]:.0f})')" "$@"; }

create() { # -> the upload's path
  curl -sf -X POST -H "$AUTH" -H "$TUS" -H "Upload-Length: $((MIB << 20))" -D - -o /dev/null "$URL/attachments" \
    | tr -d '\r' | sed -n 's/^[Ll]ocation: //p'
}
upload() { # PATH
  curl -sf -X PATCH -H "$AUTH" -H "$TUS" -H "Upload-Offset: 0" \
    -H "Content-Type: application/offset+octet-stream" -T "$WORK/src.bin" "$URL$1" -o /dev/null
}

dd_rates=(); up_rates=(); down_rates=()
for i in $(seq "$RUNS"); do
  t0=$(now); dd if="$WORK/src.bin" of="$WORK/dd.out" bs=1M conv=fsync status=none; t1=$(now)
  rm -f "$WORK/dd.out"; dd_rates+=("$(mibs "$t0" "$t1")")
  path=$(create)
  t0=$(now); upload "$path"; t1=$(now); up_rates+=("$(mibs "$t0" "$t1")")
  t0=$(now); got=$(curl -sf -H "$AUTH" "$URL$path" | sha256sum | cut -d' ' -f1); t1=$(now)
  down_rates+=("$(mibs "$t0" "$t1")")
  [[ "$got" == "$SUM" ]] || { echo "download differs"; exit 1; }
  curl -sf -X DELETE -H "$AUTH" -H "$TUS" "$URL$path"
done

rss() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
idle=$(rss)
paths=(); for i in $(seq 10); do paths+=("$(create)"); done
peak=$idle
uploaders=()
for p in "${paths[@]}"; do upload "$p" & uploaders+=($!); done
running() { for u in "${uploaders[@]}"; do kill -0 "$u" 2>/dev/null && return 0; done; return 1; }
while running; do
  r=$(rss); (( r > peak )) && peak=$r
  sleep 0.05
done
wait "${uploaders[@]}"

{
  echo "dd conv=fsync, $MIB MiB:  $(stats "${dd_rates[@]}")"
  echo "upload (one PATCH):     $(stats "${up_rates[@]}")"
  echo "download:               $(stats "${down_rates[@]}")"
  echo "upload / dd (medians):  $(python3 -c "import statistics as s; print(f'{s.median(map(float,\"${up_rates[*]}\".split()))/s.median(map(float,\"${dd_rates[*]}\".split())):.2f}')")"
  echo "RSS idle $((idle / 1024)) MiB, peak with 10 uploads of $MIB MiB at once $((peak / 1024)) MiB (+$(((peak - idle) / 1024)) MiB)"
} | tee -a "$OUT"
