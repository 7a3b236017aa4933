#!/usr/bin/env bash
# Every test of rzstack: the whole workspace suite on SQLite, then again on a PostgreSQL
# server this script starts itself (loopback only, its own data directory, removed at exit).
# Installs what it needs on Debian 12 (as root) and can be run any number of times.
#   RZSTACK_SKIP_PG=1  skip the PostgreSQL pass (local quick runs only; never in CI)
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n==== %s ====\n' "$*"; }

pg_bin_dir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && { echo "$d"; return 0; }
    done
    return 1
}

install_packages() {
    local need=()
    command -v cc >/dev/null || need+=(build-essential)
    command -v pkg-config >/dev/null || need+=(pkg-config)
    command -v qemu-img >/dev/null || need+=(qemu-utils)
    if [ "${RZSTACK_SKIP_PG:-}" != 1 ] || [ -n "${CI:-}" ]; then
        pg_bin_dir >/dev/null || need+=(postgresql)
    fi
    if [ ${#need[@]} -gt 0 ]; then
        section "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${need[@]}"
        # Debian's package starts a cluster of its own; we do not use it.
        if command -v pg_ctlcluster >/dev/null; then
            for c in /etc/postgresql/*/main; do
                [ -d "$c" ] || continue
                v=$(basename "$(dirname "$c")")
                pg_ctlcluster "$v" main stop >/dev/null 2>&1 || true
            done
        fi
    fi
}

PG_DIR=""
PG_BIN=""
PG_PORT=""
stop_pg() {
    if [ -n "$PG_DIR" ] && [ -d "$PG_DIR" ]; then
        su postgres -s /bin/sh -c "'$PG_BIN/pg_ctl' -D '$PG_DIR/data' -m immediate -w stop" >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
    fi
    PG_DIR=""
}
trap stop_pg EXIT

start_pg() {
    PG_BIN=$(pg_bin_dir) || { echo "no PostgreSQL server binaries found" >&2; return 1; }
    PG_DIR=$(mktemp -d /tmp/rzstack-pg-XXXXXX)
    chown postgres "$PG_DIR"
    PG_PORT=55432
    while (exec 3<>"/dev/tcp/127.0.0.1/$PG_PORT") 2>/dev/null; do PG_PORT=$((PG_PORT + 1)); done
    su postgres -s /bin/sh -c "'$PG_BIN/initdb' -D '$PG_DIR/data' -A trust -U postgres --no-sync" >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; return 1; }
    su postgres -s /bin/sh -c "'$PG_BIN/pg_ctl' -D '$PG_DIR/data' -l '$PG_DIR/server.log' -w -t 60 \
        -o \"-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400\" start" >/dev/null \
        || { cat "$PG_DIR/server.log" >&2; return 1; }
    echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT ($PG_DIR)"
}

install_packages

section "build"
cargo build --workspace --all-targets

section "tests on SQLite"
cargo test --workspace

if [ "${RZSTACK_SKIP_PG:-}" = 1 ] && [ -z "${CI:-}" ]; then
    section "PostgreSQL pass skipped (RZSTACK_SKIP_PG=1)"
    exit 0
fi

section "tests on PostgreSQL"
start_pg
RZSTACK_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres" cargo test --workspace
