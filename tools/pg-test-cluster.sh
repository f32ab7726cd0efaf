#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the PostgreSQL store's tests.
#
#   eval "$(tools/pg-test-cluster.sh start)"   # prints `export SIGNAL_SERVER_TEST_DATABASE_URL=...`
#   tools/pg-test-cluster.sh stop "$DIR"        # DIR is printed as PG_TEST_CLUSTER_DIR
#
# The cluster lives in a temp dir, listens on 127.0.0.1 only on a free port, and is run by an
# unprivileged user when started as root (initdb refuses root). Everything it prints on stdout
# is meant for `eval`; progress goes to stderr.
set -euo pipefail

find_bin() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/initdb" ] && { echo "$dir"; return; }
    done
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
    return 1
}

as_owner() {
    # Runs a command as the cluster's owner: ourselves, or `pgtest` when we are root.
    if [ "$(id -u)" = 0 ]; then
        su -s /bin/sh pgtest -c "$(printf '%q ' "$@")"
    else
        "$@"
    fi
}

# free_port: a TCP port on 127.0.0.1 nothing listens on.
. "$(dirname "$0")/free-port.sh"

start() {
    local bin
    if ! bin=$(find_bin); then
        echo "PostgreSQL not found; installing it" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
        bin=$(find_bin)
    fi
    if [ "$(id -u)" = 0 ] && ! id pgtest >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin pgtest
    fi
    local dir port
    dir=$(mktemp -d /tmp/pg-test-cluster.XXXXXX)
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown pgtest "$dir"
    port=$(free_port)
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 >&2
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir \
            -c max_connections=200" start >&2
    echo "export PG_TEST_CLUSTER_DIR=$dir"
    echo "export SIGNAL_SERVER_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres"
}

stop() {
    local dir=${1:?usage: $0 stop DIR}
    local bin
    bin=$(find_bin)
    [ -d "$dir/data" ] && as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: $0 start | stop DIR" >&2; exit 2 ;;
esac
