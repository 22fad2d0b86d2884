#!/usr/bin/env bash
# Noisy neighbours: a quiet tenant's upload-to-forwarded latency (p50, p99 of N one-recording
# conversations over SFTP) on an idle daemon, and while a noisy tenant sends (a) a 2 GiB zip,
# (b) 5,000 small files, (c) a 150,000-column CSV, (d) a backlog of 20,000 ready conversations,
# all in the same run against one daemon; with the catalog writer's hold p99 and max in each.
#
#   bench/neighbours.sh                 # all four series, N=100
#   N=100 ZIP_GIB=1 bench/neighbours.sh idle zip
#   KEEP=1 bench/neighbours.sh          # keep the work folder (daemon log) afterwards
#
# Targets: p99 <= 1 s under each load (issue 11); <= 250 ms under each, backlog included (issue 20).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
python3 -c "import paramiko" 2>/dev/null || python3 -m pip install --quiet paramiko
cargo build --release --quiet

W=$(mktemp -d /tmp/dropsync-neighbours.XXXXXX)
cleanup() {
    [ -n "${DS_PID:-}" ] && kill "$DS_PID" 2>/dev/null && wait "$DS_PID" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
PORT=$(free_port)
METRICS=$(free_port)
for t in quiet noisy; do ssh-keygen -q -t ed25519 -N "" -f "$W/${t}_key"; done
cat > "$W/dropsync.toml" <<CFG
state_dir = "var"
[sftp]
listen = "127.0.0.1:$PORT"
[sink]
type = "dir"
path = "var/outbox"
[matching]
zip_max_unpacked = "3GiB"
zip_max_ratio = 100000
[limits]
quota = { bytes = "20 GiB", files = 100000, sessions = 16 }
[metrics]
listen = "127.0.0.1:$METRICS"
[[tenants]]
id = "quiet"
authorized_keys_file = "quiet_key.pub"
[tenants.mapping]
conversation_id = "Contact Reference"
agent = "Agent Email"
contact_time = "Contact Date"
recording = "Audio Filename"
[[tenants]]
id = "noisy"
authorized_keys_file = "noisy_key.pub"
[tenants.mapping]
conversation_id = "Contact Reference"
agent = "Agent Email"
contact_time = "Contact Date"
recording = "Audio Filename"
CFG
RUST_LOG=${RUST_LOG:-warn} target/release/dropsync run --config "$W/dropsync.toml" 2> "$W/daemon.log" &
DS_PID=$!
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
    sleep 0.1
done
echo "quiet tenant: ${N:-100} one-recording conversations over SFTP, upload end to metadata.json in the sink"
PORT=$PORT METRICS=$METRICS WORK=$W DROPSYNC=target/release/dropsync python3 bench/neighbours.py "$@"
echo "daemon peak RSS: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/$DS_PID/status)"
