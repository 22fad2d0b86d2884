#!/usr/bin/env bash
# Zip batch benchmark: a zip of N small WAV recordings, unpacked by `unzip -q` into a fresh
# folder followed by `sync`, against dropsync taking the same zip dropped into a tenant's folder
# (dir sink, one tenant), from its arrival to all N entries recorded in the catalog; same run,
# alternating, medians of REPS, and the ratio (above 1: dropsync is the faster).
#
#   bench/zip.sh                       # 10,000 entries of 8 KiB, 3 reps
#   N=2000 SIZE=65536 REPS=5 bench/zip.sh
#   BIN=target/zip-base/dropsync bench/zip.sh   # another build of dropsync, same measure
#
# dropsync's clock starts when the zip is renamed into the drop folder (written beforehand on
# the same file system, so that copying it is not counted) and stops when `status --json`
# shows N files present and nothing queued for intake: each entry unpacked, fsynced, renamed
# into place and recorded with its digest and duration. The split (unpack alone, from the
# "zip batch unpacked" log line) is printed too. Each run starts after `sync`, so neither pays
# for the other's write-back.
#
# Nothing is deleted until the end: on an ext4 without a journal (this machine's), creating a
# file skips every inode of its group freed in the last few minutes (`recently_deleted`), so a
# run made right after 10,000 files were deleted spent most of its time in the inode allocator
# (seen with perf: find_inode_bit, recently_deleted), whichever of the two it was.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${N:-10000}
SIZE=${SIZE:-8192}
REPS=${REPS:-3}
BIN=${BIN:-target/release/dropsync}
[ "$BIN" = target/release/dropsync ] && cargo build --release --quiet
command -v unzip >/dev/null || { echo "unzip is missing: apt-get install unzip" >&2; exit 1; }

W=$(mktemp -d "$PWD/target/dropsync-zipbench.XXXXXX")
cleanup() {
    [ -n "${DS_PID:-}" ] && kill "$DS_PID" 2>/dev/null || true
    [ -n "${KEEP:-}" ] && echo "kept $W" >&2 || rm -rf "$W"
}
trap cleanup EXIT

# The zip: N distinct WAVs (noise, stored: recordings do not compress).
wav_noise "$SIZE" "$W/one.wav"
python3 - "$W/one.wav" "$W/batch.zip" "$N" <<'PY'
import os, sys, zipfile
one, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
head = open(one, "rb").read()
with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
    for i in range(n):
        z.writestr(f"call-{i:06d}.wav", head[:44] + os.urandom(len(head) - 44))
PY

settle() { sync; sleep 1; }
unzip_run() {
    local t0 t1
    settle
    t0=$(date +%s.%N)
    unzip -q "$W/batch.zip" -d "$W/unzip-$1"
    sync
    t1=$(date +%s.%N)
    [ "$(find "$W/unzip-$1" -type f | wc -l)" -eq "$N" ] || { echo "unzip did not unpack $N files" >&2; exit 1; }
    # Kept until the end: see "Nothing is deleted" above.
    echo "$t1 - $t0" | bc -l
}
status_field() {  # $1 = config, $2 = field of tenant acme in `status --json`
    "$BIN" status --json --config "$1" 2>/dev/null \
        | python3 -c "import json,sys; print(json.load(sys.stdin)['tenants'].get('acme',{}).get('$2',0))" 2>/dev/null || echo 0
}
dropsync_run() {
    local st="$W/ds-$1" t0 t1 u
    mkdir -p "$st"
    cat > "$st.toml" <<CFG
state_dir = "$st"
[sink]
type = "dir"
path = "$st/outbox"
[[tenants]]
id = "acme"
CFG
    RUST_LOG=warn,dropsync::app=info,dropsync::intake=info "$BIN" run --config "$st.toml" 2>"$st.log" &
    DS_PID=$!
    until grep -q 'dropsync is running' "$st.log"; do sleep 0.05; done
    cp "$W/batch.zip" "$st/batch.zip"
    settle
    t0=$(date +%s.%N)
    mv "$st/batch.zip" "$st/drop/acme/batch.zip"
    until [ "$(status_field "$st.toml" files_waiting)" -ge "$N" ] && [ "$(status_field "$st.toml" intake_queued)" -eq 0 ]; do
        sleep 0.05
    done
    t1=$(date +%s.%N)
    # The unpack alone: from the "unpacking" line to the "unpacked" one (their timestamps); and
    # announced: from the rename to the entries queued for intake, in the catalog (the issue's
    # measure: unpacked, synced and announced).
    u=$(grep -E 'unpacking zip batch|zip batch unpacked' "$st.log" | cut -d' ' -f1 \
        | python3 -c "import sys, datetime as d; t=[d.datetime.fromisoformat(l.strip().replace('Z','+00:00')) for l in sys.stdin]; print(f'{(t[-1]-t[0]).total_seconds():.3f}')")
    echo "$u" >> "$W/ds-unpack"
    grep -m1 'zip entries announced' "$st.log" | cut -d' ' -f1 \
        | python3 -c "import sys, datetime as d; t=d.datetime.fromisoformat(sys.stdin.read().strip().replace('Z','+00:00')).timestamp(); print(f'{t - $t0:.3f}')" >> "$W/ds-announced"
    kill "$DS_PID"; wait "$DS_PID" 2>/dev/null || true; DS_PID=
    [ "$(find "$st/drop/acme" -maxdepth 1 -name 'call-*.wav' | wc -l)" -eq "$N" ] || { echo "dropsync did not unpack $N files" >&2; exit 1; }
    echo "$t1 - $t0" | bc -l
}
alternate "$REPS" unzip_run dropsync_run
uz=$(printf '%s\n' "${PEER_RUNS[@]}" | median); ds=$(printf '%s\n' "${DS_RUNS[@]}" | median)
un=$(median < "$W/ds-unpack"); an=$(median < "$W/ds-announced")
python3 -c "
uz, ds, un, an = $uz, $ds, $un, $an
print(f'zip of $N x $SIZE B: unzip + sync {uz:.2f} s   dropsync announced {an:.2f} s (unpack alone {un:.2f} s), all recorded {ds:.2f} s')
print(f'  ratio unzip + sync / dropsync announced {uz/an:.2f}x, / all recorded {uz/ds:.2f}x  (medians of $REPS)')
print('  all runs (s): unzip + sync ${PEER_RUNS[*]} / dropsync recorded ${DS_RUNS[*]}; announced $(tr '\n' ' ' < "$W/ds-announced"); unpack alone $(tr '\n' ' ' < "$W/ds-unpack")')"
