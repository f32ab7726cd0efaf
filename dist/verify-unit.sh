#!/usr/bin/env bash
# Checks dist/signal-server.service with `systemd-analyze verify`, pointing ExecStart at a built
# binary (verify insists that the executable exists).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
bin="$target_dir/debug/signal-server"
[ -x "$bin" ] || cargo build --quiet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|/usr/local/bin/signal-server|$bin|" dist/signal-server.service > "$tmp/signal-server.service"
out=$(systemd-analyze verify "$tmp/signal-server.service" 2>&1 || true)
# Lines about other units on this machine are not ours.
ours=$(printf '%s\n' "$out" | grep 'signal-server.service' || true)
if [ -n "$ours" ]; then
  printf '%s\n' "$ours" >&2
  exit 1
fi
echo "dist/signal-server.service verified"
