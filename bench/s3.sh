#!/usr/bin/env bash
# S3 forwarding benchmark: dropsync forwarding N x SIZE MiB recordings to `rclone serve s3`,
# against `rclone copy` of the same files to the same server in the same run (alternating,
# REPS repetitions, medians); then the daemon's peak RSS while a BACKLOG-file backlog drains.
#
#   bench/s3.sh                      # 100 x 10 MiB, 3 reps, 3,000-file backlog
#
# dropsync's time runs from the metadata file's arrival (the recordings are already there) to
# the last conversation forwarded: matching, streaming to S3 (4 workers), metadata.json, archive.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${N:-100}
SIZE=${SIZE:-10}
REPS=${REPS:-3}
BACKLOG=${BACKLOG:-3000}
cargo build --release --quiet

W=$(mktemp -d /tmp/dropsync-s3bench.XXXXXX)
cleanup() {
    [ -n "${RC_PID:-}" ] && kill "$RC_PID" 2>/dev/null || true
    [ -n "${DS_PID:-}" ] && kill "$DS_PID" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
P=$(free_port)
mkdir -p "$W/store/calls" "$W/files"
rclone serve s3 "$W/store" --addr "127.0.0.1:$P" --auth-key AKID,SECRET 2>"$W/rclone.log" &
RC_PID=$!
printf AKID > "$W/ak"; printf SECRET > "$W/sk"
REMOTE=":s3,provider=Other,endpoint='http://127.0.0.1:$P',access_key_id=AKID,secret_access_key=SECRET,force_path_style=true:calls"
for i in $(seq -w 1 "$N"); do wav_noise $((SIZE * 1048576)) "$W/files/r$i.wav"; done

config() {  # $1 = state folder
    cat <<CFG
state_dir = "$1"
[sink]
type = "s3"
bucket = "calls"
prefix = "ds/"
endpoint = "http://127.0.0.1:$P"
path_style = true
access_key_id_file = "$W/ak"
secret_access_key_file = "$W/sk"
[[tenants]]
id = "acme"
CFG
}
count() { python3 - "$1" <<'PY'
import json, subprocess, sys
out = subprocess.run(["./target/release/dropsync", "status", "--json", "--config", sys.argv[1]], capture_output=True).stdout
v = json.loads(out or b"{}").get("tenants", {}).get("acme", {})
print(v.get("states", {}).get("forwarded", 0), v.get("files_waiting", 0))
PY
}
# One dropsync run over the N files; prints seconds from metadata arrival to all forwarded.
dropsync_run() {
    local st="$W/ds-$1"
    config "$st" > "$W/ds-$1.toml"
    RUST_LOG=warn ./target/release/dropsync run --config "$W/ds-$1.toml" 2>"$W/ds-$1.log" &
    DS_PID=$!
    until [ -d "$st/drop/acme" ]; do sleep 0.1; done
    cp "$W"/files/*.wav "$st/drop/acme/"
    until [ "$(count "$W/ds-$1.toml" | cut -d' ' -f2)" -ge "$N" ]; do sleep 0.2; done
    { echo "conversation_id,agent,contact_time,recording"; for f in "$W"/files/*.wav; do b=$(basename "$f" .wav); echo "$1-$b,a@x,2019-05-03T09:27:23Z,$b.wav"; done; } > "$W/batch.csv"
    local t0 t1
    t0=$(date +%s.%N)
    cp "$W/batch.csv" "$st/drop/acme/batch.csv"
    until [ "$(count "$W/ds-$1.toml" | cut -d' ' -f1)" -ge "$N" ]; do sleep 0.05; done
    t1=$(date +%s.%N)
    kill "$DS_PID"; wait "$DS_PID" 2>/dev/null || true; DS_PID=
    rm -rf "$st" "$W/store/calls/ds"
    echo "$t1 - $t0" | bc -l
}
rclone_run() {
    local t0 t1
    t0=$(date +%s.%N)
    if ! rclone copy --transfers 4 "$W/files" "$REMOTE/peer-$1" 2>>"$W/rclone-copy.log"; then
        echo "rclone copy failed: $(tail -3 "$W/rclone-copy.log")" >&2
        exit 1
    fi
    t1=$(date +%s.%N)
    [ "$(find "$W/store/calls/peer-$1" -type f | wc -l)" -eq "$N" ] || { echo "rclone copy did not write $N objects" >&2; exit 1; }
    rm -rf "$W/store/calls/peer-$1"
    echo "$t1 - $t0" | bc -l
}
alternate "$REPS" rclone_run dropsync_run
rc=("${PEER_RUNS[@]}"); ds=("${DS_RUNS[@]}")
mib=$((N * SIZE))
s_rc=$(printf '%s\n' "${rc[@]}" | median); s_ds=$(printf '%s\n' "${ds[@]}" | median)
python3 -c "
mib, a, b = $mib, $s_rc, $s_ds
print(f'forward {mib} MiB ($N x $SIZE MiB): rclone copy {mib/a:.1f} MiB/s   dropsync {mib/b:.1f} MiB/s   ratio {a/b:.2f}x  (medians, {a:.2f} s vs {b:.2f} s)')"

# Backlog: BACKLOG small recordings and their rows, drained while we watch the daemon's memory.
st="$W/ds-backlog"; config "$st" > "$W/backlog.toml"
mkdir -p "$st/drop/acme"
python3 - "$st/drop/acme" "$BACKLOG" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
rows = ["conversation_id,agent,contact_time,recording"]
for i in range(n):
    with open(os.path.join(d, f"b{i:05d}.wav"), "wb") as f:
        data = os.urandom(100 * 1024 - 44)  # a WAV file (8 kHz, 8-bit mono): intake reads its duration
        f.write(b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVEfmt \x10\0\0\0\x01\0\x01\0"
                + (8000).to_bytes(4, "little") * 2 + b"\x01\0\x08\0data" + len(data).to_bytes(4, "little") + data)
    rows.append(f"B-{i:05d},a@x,2019-05-03T09:27:23Z,b{i:05d}.wav")
with open(os.path.join(d, "backlog.csv"), "w") as f:
    f.write("\n".join(rows) + "\n")
PY
t0=$(date +%s.%N)
RUST_LOG=warn ./target/release/dropsync run --config "$W/backlog.toml" 2>"$W/backlog.log" &
DS_PID=$!
sleep 1
until [ "$(count "$W/backlog.toml" | cut -d' ' -f1)" -ge "$BACKLOG" ]; do sleep 0.2; done
t1=$(date +%s.%N)
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$DS_PID/status")
python3 -c "print(f'backlog: $BACKLOG x 100 KiB drained in {$t1-$t0:.1f} s ({$BACKLOG/($t1-$t0):.0f} conversations/s); dropsync peak RSS {$hwm/1024:.1f} MiB')"
