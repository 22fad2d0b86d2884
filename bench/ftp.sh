#!/usr/bin/env bash
# FTP pull benchmark: dropsync pulling N x SIZE MiB from pyftpdlib, against `rclone copy` from
# the same server in the same run (alternating, REPS repetitions, medians); then the cost of
# re-polling an unchanged LISTING-file listing, against `rclone lsl` of the same tree.
#
#   bench/ftp.sh                     # 100 x 10 MiB, 3 reps, 10,000-file listing
#   CONNECTIONS=1 bench/ftp.sh       # dropsync with one connection (rclone keeps --transfers 4)
#
# dropsync's time runs from its start to the end of its first poll, when the last file is pulled
# (connect, list, download to a temp name, size check, fsync, rename, catalog record). rclone copy's runs from its start to its
# exit (it does not fsync). Each run starts after `sync`, so neither pays for the other's
# write-back.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${N:-100}
SIZE=${SIZE:-10}
REPS=${REPS:-3}
LISTING=${LISTING:-10000}
CONNECTIONS=${CONNECTIONS:-4}
cargo build --release --quiet
python3 -c "import pyftpdlib" 2>/dev/null || { echo "pyftpdlib is missing: pip install pyftpdlib" >&2; exit 1; }

W=$(mktemp -d /tmp/dropsync-ftpbench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}" ${DS_PID:-}; do kill "$p" 2>/dev/null || true; done
    [ -n "${KEEP:-}" ] && echo "kept $W" >&2 || rm -rf "$W"
}
trap cleanup EXIT
serve() {  # $1 = folder, $2 = port
    python3 tests/peers/ftpd.py --root "$1" --port "$2" --user calls --password secret >"$W/ftpd-$2.log" 2>&1 &
    PIDS+=($!)
    until python3 -c "import socket; s=socket.create_connection(('127.0.0.1',$2)); assert s.recv(4)==b'220 '" 2>/dev/null; do sleep 0.05; done
}
P=$(free_port)
mkdir -p "$W/remote"
for i in $(seq -w 1 "$N"); do head -c $((SIZE * 1048576)) /dev/urandom > "$W/remote/r$i.wav"; done
serve "$W/remote" "$P"
printf secret > "$W/pass"

config() {  # $1 = state folder, $2 = port, $3 = min_age, $4 = poll_interval
    cat <<CFG
state_dir = "$1"
[sink]
type = "dir"
path = "$1/outbox"
[[tenants]]
id = "acme"
[[tenants.ftp]]
url = "ftp://calls@127.0.0.1:$2/"
password_file = "$W/pass"
poll_interval = "$4"
min_age = "$3"
connections = $CONNECTIONS
CFG
}
source_field() {  # $1 = config, $2 = field of the first FTP source in `status --json`
    ./target/release/dropsync status --json --config "$1" 2>/dev/null \
        | python3 -c "import json,sys; print(json.load(sys.stdin)['ftp_sources'][0]['$2'])" 2>/dev/null || echo 0
}
# Before each timed run: flush what the previous run left (rclone does not fsync, so its data is
# written back after it exits) and give the disk a moment: the root file system here is mounted
# with `discard`, and deleting the previous run's 1 GiB makes the next fsyncs slow for a while.
settle() { sync; sleep 2; }
dropsync_run() {
    local st="$W/ds-$1" t0 t1
    config "$st" "$P" 0s 1h > "$W/ds-$1.toml"
    settle
    t0=$(date +%s.%N)
    # The poll's own "poll done" line (logged once every file is durable and recorded) ends the
    # clock: watching the log costs nothing, unlike running `status` in a loop.
    RUST_LOG=warn,dropsync::ingress::ftp_poll=info ./target/release/dropsync run --config "$W/ds-$1.toml" 2>"$W/ds-$1.log" &
    DS_PID=$!
    until grep -q 'poll done' "$W/ds-$1.log"; do sleep 0.02; done
    t1=$(date +%s.%N)
    [ "$(source_field "$W/ds-$1.toml" files_pulled)" -eq "$N" ] || { echo "dropsync did not record $N files" >&2; exit 1; }
    sed -n 's/.*poll done.*took_ms=\([0-9]*\).*/\1/p' "$W/ds-$1.log" >> "$W/ds-poll-ms"
    kill "$DS_PID"; wait "$DS_PID" 2>/dev/null || true; DS_PID=
    [ "$(find "$st/drop/acme" -name 'r*.wav' | wc -l)" -eq "$N" ] || { echo "dropsync did not pull $N files" >&2; exit 1; }
    rm -rf "$st"
    echo "$t1 - $t0" | bc -l
}
REMOTE=":ftp,host=127.0.0.1,port=$P,user=calls,pass=$(rclone obscure secret):"
rclone_run() {
    local t0 t1
    settle
    t0=$(date +%s.%N)
    rclone copy --transfers 4 "$REMOTE" "$W/rc-$1" 2>>"$W/rclone.log" || { echo "rclone copy failed: $(tail -3 "$W/rclone.log")" >&2; exit 1; }
    t1=$(date +%s.%N)
    sync
    t2=$(date +%s.%N)
    echo "$t2 - $t0" | bc -l >> "$W/rclone-durable"
    [ "$(find "$W/rc-$1" -type f | wc -l)" -eq "$N" ] || { echo "rclone copy did not copy $N files" >&2; exit 1; }
    rm -rf "$W/rc-$1"
    echo "$t1 - $t0" | bc -l
}
alternate "$REPS" rclone_run dropsync_run
rc=("${PEER_RUNS[@]}"); ds=("${DS_RUNS[@]}")
mib=$((N * SIZE))
s_rc=$(printf '%s\n' "${rc[@]}" | median); s_ds=$(printf '%s\n' "${ds[@]}" | median)
s_rcd=$(median < "$W/rclone-durable")
python3 -c "
mib, a, b, c = $mib, $s_rc, $s_ds, $s_rcd
print(f'pull {mib} MiB ($N x $SIZE MiB): rclone copy {mib/a:.1f} MiB/s   dropsync {mib/b:.1f} MiB/s   ratio {a/b:.2f}x  (medians, {a:.2f} s vs {b:.2f} s)')
print(f'  rclone copy + sync (durable, as dropsync is) {mib/c:.1f} MiB/s: ratio {c/b:.2f}x')
print('  all runs (s): rclone ${rc[*]} / dropsync ${ds[*]}; dropsync poll alone (ms): $(tr '\n' ' ' < "$W/ds-poll-ms")')"

# Re-polling an unchanged listing: LISTING files in 10 folders, none old enough to pull
# (min_age = 1h), a poll every second; per poll: wall time (from the debug log) and CPU time.
P2=$(free_port)
mkdir -p "$W/many"
python3 - "$W/many" "$LISTING" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    sub = os.path.join(d, f"day{i % 10}")
    os.makedirs(sub, exist_ok=True)
    open(os.path.join(sub, f"c{i:06d}.wav"), "wb").close()
PY
serve "$W/many" "$P2"
st="$W/ds-list"; config "$st" "$P2" 1h 1s > "$W/list.toml"
RUST_LOG=warn,dropsync::ingress::ftp_poll=debug ./target/release/dropsync run --config "$W/list.toml" 2>"$W/list.log" &
DS_PID=$!
until [ "$(grep -c 'poll done' "$W/list.log")" -ge 2 ]; do sleep 0.2; done
cpu0=$(awk '{print $14 + $15}' "/proc/$DS_PID/stat"); n0=$(grep -c 'poll done' "$W/list.log")
sleep 20
cpu1=$(awk '{print $14 + $15}' "/proc/$DS_PID/stat"); n1=$(grep -c 'poll done' "$W/list.log")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$DS_PID/status")
listed=$(source_field "$W/list.toml" remote_files)
took=$(grep 'poll done' "$W/list.log" | tail -n +3 | sed -n 's/.*took_ms=\([0-9]*\).*/\1/p' | median)
kill "$DS_PID"; wait "$DS_PID" 2>/dev/null || true; DS_PID=
REMOTE2=":ftp,host=127.0.0.1,port=$P2,user=calls,pass=$(rclone obscure secret):"
lsl=()
for _ in 1 2 3; do
    t0=$(date +%s.%N); rclone lsl "$REMOTE2" > "$W/lsl.txt" 2>>"$W/rclone.log"; t1=$(date +%s.%N)
    lsl+=("$(echo "($t1 - $t0) * 1000" | bc -l)")
done
s_lsl=$(printf '%s\n' "${lsl[@]}" | median)
ticks=$(getconf CLK_TCK)
python3 -c "
polls = $n1 - $n0
cpu_ms = ($cpu1 - $cpu0) * 1000 / $ticks / max(polls, 1)
print(f're-poll of an unchanged $listed-file listing: {float($took):.0f} ms per poll (median), {cpu_ms:.0f} ms CPU per poll over {polls} polls; rclone lsl of the same tree {float($s_lsl):.0f} ms; dropsync peak RSS {$hwm/1024:.1f} MiB')"
