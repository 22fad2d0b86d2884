#!/usr/bin/env bash
# The web console's pages against a catalog of N conversations (default 100,000 over 10
# tenants, the newest arrived today, the oldest a year ago; some failed, some held): each page's
# server time (time to first byte over loopback, signed in as the operator; medians of REPS).
# The target (issue 23) is under 200 ms for every page.
#
#   bench/console.sh                 # release build, N=100000, REPS=7
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${N:-100000}
TENANTS=${TENANTS:-10}
REPS=${REPS:-7}
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
    BIN=target/release/dropsync
fi
WORK=$(mktemp -d)
trap 'kill $(cat "$WORK/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=$(free_port)
ADMIN=admin-token-0123456789abcdef
echo "$ADMIN" > "$WORK/admin.tokens"
{
    echo 'state_dir = "var"'
    echo '[sink]'; echo 'type = "dir"'; echo 'path = "var/outbox"'
    echo '[http]'; echo "listen = \"127.0.0.1:$PORT\""; echo 'admin_tokens_file = "admin.tokens"'
    for t in $(seq 0 $((TENANTS - 1))); do printf '[[tenants]]\nid = "t%02d"\nminute_allocation = 6000\n' "$t"; done
} > "$WORK/dropsync.toml"

start() {
    "$BIN" run --config "$WORK/dropsync.toml" 2>>"$WORK/daemon.log" & echo $! > "$WORK/pid"
    for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$PORT/console/login" && return; sleep 0.1; done
    echo "the daemon did not start"; tail "$WORK/daemon.log"; exit 1
}
stop() { kill "$(cat "$WORK/pid")"; wait "$(cat "$WORK/pid")" 2>/dev/null || true; }

start; stop
echo "filling the catalog with $N conversations over $TENANTS tenants"
python3 bench/history.py "$WORK/var/dropsync.db" "$N" "$TENANTS" 0
# Some of them failed and some are held, as in a real catalog (the triggers keep the counts).
python3 - "$WORK/var/dropsync.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("UPDATE conversations SET state = 'failed', detail = 'sink: 503 Slow Down' WHERE id % 997 = 0")
c.execute("UPDATE conversations SET state = 'held', detail = 'minute allocation' WHERE id % 1009 = 0")
c.commit()
PY
start
curl -s -o /dev/null -c "$WORK/jar" -d "token=$ADMIN" "http://127.0.0.1:$PORT/console/login"
ID=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select max(id) from conversations').fetchone()[0] // 2)" "$WORK/var/dropsync.db")
TODAY=$(date -u +%F)
pages=(
    /console/login
    /console/tenants
    /console/tenants/t03
    /console/calls
    "/console/calls?tenant=t03"
    "/console/calls?state=failed"
    "/console/calls?tenant=t03&state=held"
    "/console/calls?date=$TODAY"
    "/console/calls?page=500"
    "/console/calls/$ID"
    /console/onboard
    /console/upload
    /console/upload/t03/0123456789abcdef
)
worst=0
for p in "${pages[@]}"; do
    runs=()
    for _ in $(seq "$REPS"); do
        runs+=("$(curl -s -o /dev/null -b "$WORK/jar" -w '%{http_code} %{time_starttransfer}\n' "http://127.0.0.1:$PORT$p" \
            | awk '$1 != 200 { print "HTTP " $1 > "/dev/stderr"; exit 1 } { printf "%.1f\n", $2 * 1000 }')")
    done
    ms=$(printf '%s\n' "${runs[@]}" | median)
    printf '%-44s %7s ms\n' "$p" "$ms"
    worst=$(python3 -c "print(max($worst, $ms))")
done
stop
echo "slowest page: $worst ms (target: under 200 ms; $N conversations, medians of $REPS)"
