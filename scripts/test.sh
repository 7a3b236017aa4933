#!/usr/bin/env bash
# Every test of rzstack: builds the workspace, runs the whole suite on SQLite, then runs it
# again on a PostgreSQL server this script starts itself (its own temporary data directory,
# listening on 127.0.0.1 only, stopped and removed when the script exits, also on failure).
# Installs what it needs on Debian 12 (run as root); can be run any number of times.
#
#   bash scripts/test.sh                  build + SQLite pass + PostgreSQL pass
#   RZSTACK_SKIP_PG=1 bash scripts/test.sh
#                                         skip the PostgreSQL pass (quick local runs; ignored when CI is set)
#   bash scripts/test.sh --pg-only-check  only start the PostgreSQL server, check the test URL
#                                         with psql (select 1, create/drop a database), stop it
#   bash scripts/test.sh --with-pg CMD... run CMD with RZSTACK_TEST_DATABASE_URL set to a
#                                         PostgreSQL server started for it (e.g. one test file)
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=all
case "${1:-}" in
    "") ;;
    --pg-only-check) MODE=pg-check ;;
    --with-pg)
        MODE=with-pg
        shift
        WITH_PG_CMD=("$@")
        ;;
    -h | --help)
        sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: $0 [--pg-only-check]" >&2
        exit 2
        ;;
esac

section() { printf '\n==================== %s ====================\n' "$*"; }
log() { printf '[test.sh] %s\n' "$*"; }

in_ci() { case "${CI:-}" in "" | false | 0) return 1 ;; *) return 0 ;; esac; }

# The PostgreSQL pass runs unless RZSTACK_SKIP_PG=1 outside CI.
want_pg() {
    [ "$MODE" = pg-check ] || [ "$MODE" = with-pg ] && return 0
    in_ci && return 0
    [ "${RZSTACK_SKIP_PG:-}" != 1 ]
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL binaries: the directory holding initdb, pg_ctl and postgres (the one on PATH first,
# then Debian's /usr/lib/postgresql/<version>/bin, newest version first).
# ---------------------------------------------------------------------------------------------
pg_bin_dir() {
    local d candidates=()
    if command -v pg_ctl >/dev/null 2>&1; then
        candidates+=("$(dirname "$(readlink -f "$(command -v pg_ctl)")")")
        candidates+=("$(dirname "$(command -v pg_ctl)")")
    fi
    while IFS= read -r d; do candidates+=("$d"); done < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r)
    candidates+=(/usr/local/pgsql/bin)
    for d in "${candidates[@]}"; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

psql_bin() {
    local b
    b=$(pg_bin_dir 2>/dev/null) && [ -x "$b/psql" ] && { echo "$b/psql"; return 0; }
    command -v psql
}

# ---------------------------------------------------------------------------------------------
# Packages. apt is only touched when something is missing, so re-runs are fast and offline-safe.
# ---------------------------------------------------------------------------------------------
install_packages() {
    local need=()
    if [ "$MODE" = all ]; then
        command -v cc >/dev/null 2>&1 || need+=(build-essential)
        command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
        command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils) # image tests run qemu-img
        command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86) # agent QEMU/QMP tests
        command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base) # agent DHCP tests
        command -v swtpm >/dev/null 2>&1 || need+=(swtpm) # agent TPM test
        command -v ip >/dev/null 2>&1 || need+=(iproute2) # agent bridge/tap tests
        command -v busybox >/dev/null 2>&1 || need+=(busybox-static) # DHCP client in the network test
    fi
    if want_pg; then
        if ! pg_bin_dir >/dev/null || ! psql_bin >/dev/null; then need+=(postgresql); fi
    fi
    [ ${#need[@]} -eq 0 ] && return 0

    section "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
    # Debian's package may start a "main" cluster of its own on port 5432; it is not used here.
    if command -v pg_lsclusters >/dev/null 2>&1; then
        local ver name rest
        while read -r ver name rest; do
            [ -n "$name" ] && pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
        done < <(pg_lsclusters -h 2>/dev/null)
    fi
}

# ---------------------------------------------------------------------------------------------
# A private PostgreSQL server, run as the `postgres` system user.
# ---------------------------------------------------------------------------------------------
PG_USER=postgres        # system user running the server (and its superuser role)
PG_ROLE=rzstack         # role the tests connect as (LOGIN CREATEDB)
PG_DB=rzstack           # database in the test URL (tests create one fresh database per test)
PG_TMP=""               # /tmp/rzstack-pg-XXXXXX: data/, server.log, unix socket
PG_BIN=""
PG_PORT=""
PG_URL=""

as_pg() { (cd "$PG_TMP" && runuser -u "$PG_USER" -- "$@"); }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_pg() {
    PG_BIN=$(pg_bin_dir) || { echo "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found" >&2; return 1; }
    local psql
    psql=$(psql_bin) || { echo "no psql found" >&2; return 1; }
    if ! id -u "$PG_USER" >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_USER"
    fi

    PG_TMP=$(mktemp -d /tmp/rzstack-pg-XXXXXX)
    chown "$PG_USER:" "$PG_TMP"
    chmod 700 "$PG_TMP"
    as_pg "$PG_BIN/initdb" -D "$PG_TMP/data" -U "$PG_USER" --auth=trust --encoding=UTF8 --locale=C --no-sync \
        >"$PG_TMP/initdb.log" 2>&1 || { cat "$PG_TMP/initdb.log" >&2; return 1; }
    # Loopback only, socket in our own directory; durability off (throw-away test data).
    cat >>"$PG_TMP/data/postgresql.conf" <<EOF

# rzstack test server (scripts/test.sh)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_TMP'
max_connections = 400
fsync = off
synchronous_commit = off
full_page_writes = off
EOF

    # A free port from 55432 up; retried if another process takes it between the check and bind.
    local port=55432 tries=0
    while :; do
        while port_in_use "$port"; do port=$((port + 1)); done
        if as_pg "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -o "-p $port" -w -t 60 start >/dev/null; then
            break
        fi
        tries=$((tries + 1))
        if [ $tries -lt 20 ] && grep -qiE 'could not (bind|create listen)|address already in use' "$PG_TMP/server.log" 2>/dev/null; then
            port=$((port + 1))
            continue
        fi
        echo "PostgreSQL did not start; server log:" >&2
        cat "$PG_TMP/server.log" >&2 || true
        return 1
    done
    PG_PORT=$port

    as_pg "$psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_TMP" -p "$PG_PORT" -U "$PG_USER" -d postgres \
        -c "CREATE ROLE $PG_ROLE LOGIN CREATEDB" \
        -c "CREATE DATABASE $PG_DB OWNER $PG_ROLE" >/dev/null
    PG_URL="postgres://$PG_ROLE@127.0.0.1:$PG_PORT/$PG_DB"
    log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') running from $PG_TMP, test URL $PG_URL"
}

stop_pg() {
    [ -n "$PG_TMP" ] || return 0
    if [ -f "$PG_TMP/data/postmaster.pid" ]; then
        local pid
        pid=$(head -n1 "$PG_TMP/data/postmaster.pid" 2>/dev/null || true)
        as_pg "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
            as_pg "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
        # last resort: the postmaster this script started (its pid from its own data dir)
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
        fi
        log "PostgreSQL on port $PG_PORT stopped"
    fi
    rm -rf "$PG_TMP"
    PG_TMP=""
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    stop_pg || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------------------------------------
if [ "$MODE" = pg-check ]; then
    install_packages
    section "PostgreSQL check"
    start_pg
    psql=$(psql_bin)
    "$psql" -X -q -v ON_ERROR_STOP=1 "$PG_URL" -At -c 'select 1'
    # what the tests do: a fresh database per test, made from the URL's connection
    "$psql" -X -q -v ON_ERROR_STOP=1 "$PG_URL" -c 'CREATE DATABASE rzt_check' -c 'DROP DATABASE rzt_check'
    log "select 1 and CREATE/DROP DATABASE as $PG_ROLE over 127.0.0.1:$PG_PORT: ok"
    exit 0
fi

if [ "$MODE" = with-pg ]; then
    install_packages
    start_pg
    rc=0
    RZSTACK_TEST_DATABASE_URL="$PG_URL" "${WITH_PG_CMD[@]}" || rc=$?
    exit "$rc"
fi

if in_ci && [ "${RZSTACK_SKIP_PG:-}" = 1 ]; then log "RZSTACK_SKIP_PG=1 is ignored in CI"; fi
install_packages

# a rustup toolchain may not be on PATH in a non-login shell
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

section "build"
cargo build --workspace --all-targets

results=()
status=0

section "tests on SQLite"
# Every cargo test result line is also kept here, for the closing count.
RESULTS_LOG=$(mktemp /tmp/rzstack-test-results-XXXXXX)
if env -u RZSTACK_TEST_DATABASE_URL cargo test --workspace --no-fail-fast 2>&1 | tee -a "$RESULTS_LOG"; then
    results+=("SQLite: passed")
else
    results+=("SQLite: FAILED")
    status=1
fi

if want_pg; then
    section "tests on PostgreSQL"
    start_pg
    if RZSTACK_TEST_DATABASE_URL="$PG_URL" cargo test --workspace --no-fail-fast 2>&1 | tee -a "$RESULTS_LOG"; then
        results+=("PostgreSQL: passed")
    else
        results+=("PostgreSQL: FAILED")
        status=1
    fi
    section "benchmark smoke on PostgreSQL (correctness only; figures are not judged)"
    if cargo run -q -p rzstack-bench -- query --n 50 --concurrency 10 --hosts 5 --repeat 5 --database "$PG_URL"; then
        results+=("benchmark smoke on PostgreSQL: passed")
    else
        results+=("benchmark smoke on PostgreSQL: FAILED")
        status=1
    fi
    stop_pg
else
    results+=("PostgreSQL: skipped (RZSTACK_SKIP_PG=1)")
fi

section "benchmark smoke on SQLite: query, scale, create, boot (one real guest where QEMU runs); correctness only, figures are not judged"
if cargo run -q -p rzstack-bench -- query --n 50 --concurrency 10 --hosts 5 --repeat 5 &&
    cargo run -q -p rzstack-bench -- scale --n 50 --concurrency 10 --hosts 5 &&
    cargo run -q -p rzstack-bench -- create --n 50 --concurrency 10 --hosts 5 &&
    cargo run -q -p rzstack-bench -- boot --boots 1; then
    results+=("benchmark smoke on SQLite: passed")
else
    results+=("benchmark smoke on SQLite: FAILED")
    status=1
fi

section "summary"
for r in "${results[@]}"; do log "$r"; done
# The closing line: every test of both passes, summed from cargo's result lines.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$RESULTS_LOG"
rm -f "$RESULTS_LOG"
exit "$status"
