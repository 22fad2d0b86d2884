#!/usr/bin/env bash
# SFTP upload benchmark: dropsync against OpenSSH's own sshd (internal-sftp), same OpenSSH client
# and cipher, loopback, alternating, REPS repetitions; prints medians and the ratio, then
# dropsync's memory with IDLE idle sessions.
#
#   bench/sftp.sh                 # 1 GiB file, 1,000 x 100 KiB files, 3 reps, 200 idle sessions
#   ONLY_IDLE=1 IDLE=1000 bench/sftp.sh   # 1,000 idle sessions on each server, nothing else
#   CIPHER=chacha20-poly1305@openssh.com REPS=5 bench/sftp.sh
#   BIN=target/bench-base/target/release/dropsync bench/sftp.sh   # another build, same measure
#   ONLY_CONCURRENT=1 bench/sftp.sh       # 100 sessions uploading at once (~2 min on the faster),
#                                         # servers pinned to CPU 1, clients to CPU 0
#
# The small files are .wav: dropsync ingests them as recordings (hash, catalog) while it
# receives, as in production. The big file is .bin: it is received exactly like a recording,
# then rejected as "unknown kind" and moved aside at once, so hashing 1 GiB does not overlap the
# peer's turn. FSYNC=0 runs dropsync with sftp.fsync_on_close = false, as OpenSSH behaves. With
# the default (durable CLOSE) a third series compares the small files with both sides durable:
# OpenSSH's client asking for fsync@openssh.com (`put -f`) against dropsync's plain CLOSE.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CIPHER=${CIPHER:-aes128-gcm@openssh.com}
REPS=${REPS:-3}
BIG_MIB=${BIG_MIB:-1024}
SMALL_N=${SMALL_N:-1000}
IDLE=${IDLE:-200}
FSYNC=${FSYNC:-1}
SESSIONS=${SESSIONS:-100}        # concurrent mode: sessions uploading at once
PUTS=${PUTS:-60}                 # concurrent mode: 8 MiB files each session uploads
EXT=${EXT:-wav}                  # concurrent mode: wav = recordings (hashed as they arrive), bin = other files
# Concurrent mode pins the servers to one core and the clients to the other: unpinned, a hundred
# client processes take most of a 2-core machine from whichever server runs beside them.
if [ -n "${ONLY_CONCURRENT:-}" ]; then SERVER_PIN=(taskset -c 1); CLIENT_PIN=(taskset -c 0); else SERVER_PIN=(); CLIENT_PIN=(); fi

if [ ! -x /usr/sbin/sshd ]; then
    echo "installing openssh-server (the peer)"
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server
    rm -f /usr/sbin/policy-rc.d
fi
BIN=${BIN:-./target/release/dropsync}
[ "$BIN" = ./target/release/dropsync ] && cargo build --release --quiet

W=$(mktemp -d /tmp/dropsync-bench.XXXXXX)
cleanup() {
    [ -f "$W/sshd.pid" ] && kill "$(cat "$W/sshd.pid")" 2>/dev/null || true
    [ -n "${DS_PID:-}" ] && kill "$DS_PID" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
P_SSHD=$(free_port); P_DS=$(free_port)

ssh-keygen -q -t ed25519 -N "" -f "$W/client"
ssh-keygen -q -t ed25519 -N "" -f "$W/sshd_host"
cp "$W/client.pub" "$W/authorized_keys"
mkdir -p "$W/sshd-in" /run/sshd
cat > "$W/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port $P_SSHD
HostKey $W/sshd_host
PidFile $W/sshd.pid
AuthorizedKeysFile $W/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
MaxStartups 2000
Subsystem sftp internal-sftp
CFG
"${SERVER_PIN[@]}" /usr/sbin/sshd -e -f "$W/sshd_config"

cat > "$W/dropsync.toml" <<CFG
state_dir = "state"
[sftp]
listen = "127.0.0.1:$P_DS"
max_sessions = 2000
max_sessions_per_ip = 2000
max_startups = 2000
max_startups_per_source = 2000
fsync_on_close = $([ "$FSYNC" = 1 ] && echo true || echo false)
[sink]
type = "dir"
path = "state/outbox"
[limits]
quota = { sessions = 2000 }
[[tenants]]
id = "bench"
authorized_keys_file = "client.pub"
CFG
RUST_LOG=warn "${SERVER_PIN[@]}" "$BIN" run --config "$W/dropsync.toml" 2>"$W/dropsync.log" &
DS_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$P_DS) 2>/dev/null && break; sleep 0.1; done

if [ -z "${ONLY_IDLE:-}${ONLY_CONCURRENT:-}" ]; then
mkdir -p "$W/small"
head -c $((BIG_MIB * 1048576)) /dev/urandom > "$W/big.bin"
for i in $(seq -w 1 "$SMALL_N"); do head -c 102400 /dev/urandom > "$W/small/f$i.wav"; done
fi

SSH_OPTS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -c "$CIPHER" -i "$W/client")
# upload PEER WHAT -> seconds
upload() {
    local port user target batch
    if [ "$1" = sshd ]; then port=$P_SSHD; user=$(id -un); target="$W/sshd-in"; else port=$P_DS; user=bench; target=.; fi
    # Small files go to a new folder each run, as new calls would: nothing is overwritten or
    # deleted while the clock runs (ext4 without a journal, as here, makes creating files next to
    # just-deleted ones slow, and that would charge one side for the other's clean-up).
    local run="run-$RANDOM$RANDOM"
    case "$2" in
        big) batch="put $W/big.bin $target/big-$RANDOM.bin" ;;
        small) batch=$(printf 'mkdir %s\nput %s %s/\n' "$target/$run" "$W/small/*" "$target/$run") ;;
        # `put -f` asks the server to fsync each file (fsync@openssh.com) before closing it:
        # OpenSSH's way to the durability dropsync's CLOSE gives by default.
        small-f) batch=$(printf 'mkdir %s\nput -f %s %s/\n' "$target/$run" "$W/small/*" "$target/$run") ;;
    esac
    local t0 t1
    t0=$(date +%s.%N)
    if ! echo "$batch" | sftp -q -b - "${SSH_OPTS[@]}" -P "$port" "$user@127.0.0.1" >/dev/null; then
        echo "upload to $1 failed" >&2
        exit 1
    fi
    t1=$(date +%s.%N)
    rm -f "$W/sshd-in"/big-* 2>/dev/null || true
    echo "$t1 - $t0" | bc -l
}

# concurrent PEER -> seconds for SESSIONS sessions, each putting PUTS x 8 MiB (two names in turn,
# so that the disk holds 2 files a session); every client's exit code is checked.
concurrent() {
    local port user target i k pids=() t0 t1 failed=0
    if [ "$1" = sshd ]; then port=$P_SSHD; user=$(id -un); target="$W/sshd-in"; else port=$P_DS; user=bench; target=.; fi
    for i in $(seq "$SESSIONS"); do
        for k in $(seq "$PUTS"); do echo "put $W/chunk.wav $target/s$i-$((k % 2)).$EXT"; done > "$W/batch-$i"
    done
    t0=$(date +%s.%N)
    for i in $(seq "$SESSIONS"); do
        "${CLIENT_PIN[@]}" sftp -q -b "$W/batch-$i" "${SSH_OPTS[@]}" -P "$port" "$user@127.0.0.1" >/dev/null 2>>"$W/clients.err" &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || failed=$((failed + 1)); done
    t1=$(date +%s.%N)
    if [ "$failed" -gt 0 ]; then echo "$failed of $SESSIONS sessions to $1 failed:" >&2; sort "$W/clients.err" | uniq -c >&2; exit 1; fi
    echo "$t1 - $t0" | bc -l
}
if [ -n "${ONLY_CONCURRENT:-}" ]; then
    head -c $((8 << 20)) /dev/urandom > "$W/chunk.wav"
    mib=$((SESSIONS * PUTS * 8))
    echo "$SESSIONS sessions at once, each $PUTS x 8 MiB .$EXT ($mib MiB in all), cipher $CIPHER, servers on CPU 1, clients on CPU 0, dropsync fsync_on_close=$([ "$FSYNC" = 1 ] && echo true || echo false)"
    s_ds=$(concurrent dropsync)
    if [ -n "${ONLY_DROPSYNC:-}" ]; then echo "dropsync alone: $(echo "$mib / $s_ds" | bc -l | cut -c1-6) MiB/s ($s_ds s)"; exit 0; fi
    s_sshd=$(concurrent sshd)
    python3 - "$mib" "$s_sshd" "$s_ds" <<'PY'
import sys
mib, a, b = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"concurrent: OpenSSH sshd {mib/a:8.1f} MiB/s   dropsync {mib/b:8.1f} MiB/s   ratio {a/b:.2f}x  (seconds {a:.1f} vs {b:.1f}, no errors)")
PY
    exit 0
fi

declare -A T
[ -n "${ONLY_IDLE:-}" ] && REPS=0
for rep in $(seq "$REPS"); do
    for what in big small $([ "$FSYNC" = 1 ] && echo small-f); do
        # Alternate who goes first, so neither always gets the warmer cache.
        if [ $((rep % 2)) -eq 1 ]; then order="sshd dropsync"; else order="dropsync sshd"; fi
        for peer in $order; do
            # dropsync's CLOSE is already durable: it gets the plain `put` in the durable series.
            if [ "$what" = small-f ] && [ "$peer" = dropsync ]; then how=small; else how=$what; fi
            s=$(upload "$peer" "$how") || exit 1
            T[$peer-$what]+="$s "
            sleep 1   # let dropsync move the previous upload aside
        done
    done
done

report() {
    local what=$1 unit=$2 amount=$3
    local s_sshd s_ds
    s_sshd=$(echo "${T[sshd-$what]}" | tr ' ' '\n' | grep . | median)
    s_ds=$(echo "${T[dropsync-$what]}" | tr ' ' '\n' | grep . | median)
    python3 - "$what" "$unit" "$amount" "$s_sshd" "$s_ds" <<'PY'
import sys
what, unit, amount, a, b = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
print(f"{what:>7}: OpenSSH sshd {amount/a:8.1f} {unit}   dropsync {amount/b:8.1f} {unit}   ratio {a/b:.2f}x  (median of runs, seconds {a:.2f} vs {b:.2f})")
PY
}
if [ -z "${ONLY_IDLE:-}" ]; then
echo "cipher $CIPHER, $REPS reps, loopback, 2 cores, dropsync fsync_on_close=$([ "$FSYNC" = 1 ] && echo true || echo false)"
report big MiB/s "$BIG_MIB"
report small files/s "$SMALL_N"
if [ "$FSYNC" = 1 ]; then
    echo "both durable: OpenSSH with put -f (fsync@openssh.com per file), dropsync with plain put (durable CLOSE):"
    report small-f files/s "$SMALL_N"
fi
fi

# Memory with idle sessions: IDLE authenticated SFTP sessions doing nothing, held by one
# paramiko process per server; dropsync's RSS against the sum over OpenSSH's processes (sshd
# forks a process, or two, per session).
hold_idle() {
    python3 - "$1" "$2" "$IDLE" "$W/client" > "$W/hold-$1.out" <<'PY' &
import sys, time, paramiko
port, user, n, key = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
pkey = paramiko.Ed25519Key.from_private_key_file(key)
held = []
for i in range(n):
    t = paramiko.Transport(("127.0.0.1", port))
    t.connect(username=user, pkey=pkey)
    held.append((t, paramiko.SFTPClient.from_transport(t)))
print("held", len(held), flush=True)
time.sleep(600)
PY
    echo $!
}
python3 -c "import paramiko" 2>/dev/null || python3 -m pip install --quiet paramiko
sessions_up() { ss -Htn state established "( sport = :$1 )" | wc -l; }
wait_sessions() { for _ in $(seq 600); do [ "$(sessions_up "$1")" -ge "$IDLE" ] && break; sleep 0.5; done; }
HOLD_DS=$(hold_idle "$P_DS" bench); wait_sessions "$P_DS"
rss=$(awk '/VmRSS/ {print $2}' "/proc/$DS_PID/status")
ds_up=$(sessions_up "$P_DS")   # counted while held, not after the holder is killed
HOLD_SSHD=$(hold_idle "$P_SSHD" "$(id -un)"); wait_sessions "$P_SSHD"
sshd_rss=$(ps -o rss= -C sshd | awk '{s+=$1} END {print s}')
sshd_procs=$(pgrep -c -x sshd)
kill "$HOLD_DS" "$HOLD_SSHD" 2>/dev/null || true
echo "idle: $ds_up sessions on dropsync, RSS $((rss / 1024)) MiB; $IDLE on OpenSSH sshd, $sshd_procs processes, total RSS $((sshd_rss / 1024)) MiB"
