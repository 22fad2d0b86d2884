#!/usr/bin/env bash
# What a long history costs the operator's views: a catalog holding N forwarded conversations
# from past months (default 1,000,000 over 10 tenants), then `/metrics` and `status --json`
# timed against it (medians of REPS), before and after the catalog is pruned.
#
#   bench/history.sh                 # release build, N=1000000, REPS=5
#   N=100000 BIN=target/debug/dropsync bench/history.sh
#   OLD=1 BIN=target/bench-base/target/release/dropsync bench/history.sh   # an older build, no pruning
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${N:-1000000}
TENANTS=${TENANTS:-10}
REPS=${REPS:-5}
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
    BIN=target/release/dropsync
fi
WORK=$(mktemp -d)
trap 'kill $(cat "$WORK/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=$(free_port)
{
    echo 'state_dir = "var"'
    echo '[sink]'; echo 'type = "dir"'; echo 'path = "var/outbox"'
    echo '[retention]'; echo "local = \"${RETENTION:-30d}\""
    # OLD=1: a build from before retention.catalog (to measure the starting point).
    [ -n "${OLD:-}" ] || echo "catalog = \"${RETENTION:-30d}\""
    echo '[metrics]'; echo "listen = \"127.0.0.1:$PORT\""
    for t in $(seq 0 $((TENANTS - 1))); do printf '[[tenants]]\nid = "t%02d"\n' "$t"; done
} > "$WORK/dropsync.toml"

start() {
    "$BIN" run --config "$WORK/dropsync.toml" 2>>"$WORK/daemon.log" & echo $! > "$WORK/pid"
    for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done
    echo "the daemon did not start"; tail "$WORK/daemon.log"; exit 1
}
stop() { kill "$(cat "$WORK/pid")"; wait "$(cat "$WORK/pid")" 2>/dev/null || true; }

# time_ms CMD…: milliseconds one run of CMD takes.
time_ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N); echo $(((t1 - t0) / 1000000)); }
measure() {
    local label=$1 m=() s=()
    for _ in $(seq "$REPS"); do
        m+=("$(time_ms curl -sf "http://127.0.0.1:$PORT/metrics")")
        s+=("$(time_ms "$BIN" status --json --config "$WORK/dropsync.toml")")
    done
    local rows; rows=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from conversations').fetchone()[0])" "$WORK/var/dropsync.db")
    echo "$label ($rows conversation rows): /metrics $(printf '%s\n' "${m[@]}" | median) ms, status --json $(printf '%s\n' "${s[@]}" | median) ms (medians of $REPS)"
}

start; stop
echo "filling the catalog with $N forwarded conversations over $TENANTS tenants"
python3 bench/history.py "$WORK/var/dropsync.db" "$N" "$TENANTS"
start
measure "before pruning"
if [ -z "${OLD:-}" ]; then
    # Housekeeping prunes what is past retention; wait for the rows to go.
    for _ in $(seq 1200); do
        left=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from conversations').fetchone()[0])" "$WORK/var/dropsync.db")
        [ "$left" -lt "$N" ] && [ "$left" -lt $((N / 100)) ] && break
        sleep 0.5
    done
    measure "after pruning"
fi
stop
echo "writer holds over 100 ms: $(grep -c "catalog writer held long" "$WORK/daemon.log" || true), by where:"
grep "catalog writer held long" "$WORK/daemon.log" | sed 's/.* at=\([^ ]*\).*/\1/' | sort | uniq -c | sort -rn | head -5 || true
