#!/usr/bin/env bash
# A throwaway S3-protocol server (s3s-fs: S3 over a directory) for the S3 blob store's tests.
#
#   eval "$(tools/s3-test-server.sh start)"   # prints `export SIGNAL_SERVER_TEST_S3_ENDPOINT=...`
#   tools/s3-test-server.sh stop "$DIR"        # DIR is printed as S3_TEST_SERVER_DIR
#
# The server keeps its objects in a temp dir, listens on 127.0.0.1 only on a free port, and has
# one bucket and one key pair made up here. s3s-fs is installed with cargo when missing (a few
# minutes, once: into cargo's bin dir). Everything it prints on stdout is meant for `eval`;
# progress goes to stderr.
set -euo pipefail

# 0.15 and later need a newer Rust than the project's toolchain.
S3S_FS_VERSION=0.14.1
BUCKET=signal-test

find_bin() {
    local bin
    for bin in "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" "$(command -v s3s-fs 2>/dev/null || true)"; do
        if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null)" = "s3s-fs $S3S_FS_VERSION" ]; then
            echo "$bin"
            return
        fi
    done
    return 1
}

install() {
    echo "s3s-fs $S3S_FS_VERSION not found; installing it with cargo" >&2
    local target start
    target=$(mktemp -d /tmp/s3s-fs-build.XXXXXX)
    start=$SECONDS
    cargo install s3s-fs --version "$S3S_FS_VERSION" --locked --features binary \
        --target-dir "$target" >&2
    rm -rf "$target"
    echo "s3s-fs installed in $((SECONDS - start)) s" >&2
}

# free_port: a TCP port on 127.0.0.1 nothing listens on.
. "$(dirname "$0")/free-port.sh"

start() {
    local bin
    bin=$(find_bin) || { install; bin=$(find_bin); }
    local dir port key secret
    dir=$(mktemp -d /tmp/s3-test-server.XXXXXX)
    # A bucket of s3s-fs is a directory under its root.
    mkdir -p "$dir/data/$BUCKET"
    port=$(free_port)
    key=test-$RANDOM$RANDOM
    secret=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    # Its own log level: a RUST_LOG meant for the tests would flood the log.
    RUST_LOG=warn nohup "$bin" --host 127.0.0.1 --port "$port" \
        --access-key "$key" --secret-key "$secret" "$dir/data" >"$dir/log" 2>&1 &
    echo $! >"$dir/pid"
    local i
    for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
            cat "$dir/log" >&2
            echo "s3s-fs exited at start" >&2
            return 1
        fi
        [ "$i" = 100 ] && { echo "s3s-fs did not listen on $port within 10 s" >&2; return 1; }
        sleep 0.1
    done
    echo "export S3_TEST_SERVER_DIR=$dir"
    echo "export SIGNAL_SERVER_TEST_S3_ENDPOINT=http://127.0.0.1:$port"
    echo "export SIGNAL_SERVER_TEST_S3_BUCKET=$BUCKET"
    echo "export AWS_ACCESS_KEY_ID=$key"
    echo "export AWS_SECRET_ACCESS_KEY=$secret"
    echo "export AWS_REGION=us-east-1"
}

stop() {
    local dir=${1:?usage: $0 stop DIR}
    if [ -f "$dir/pid" ]; then
        local pid
        pid=$(cat "$dir/pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: $0 start | stop DIR" >&2; exit 2 ;;
esac
