#!/usr/bin/env bash
# HTTP API benchmark (issue 22), release build, same run:
#  1. a SIZE_MIB recording PUT with curl to dropsync's signed upload URL (one call at a time:
#     streamed, hashed, fsynced before the 200) against the same PUT with curl to a presigned
#     URL of `rclone serve s3` (boto3 signs it; rclone does not fsync, so it is also shown with
#     a `sync` after it); alternating, REPS repetitions, medians;
#  2. CONCURRENT batch uploads at once (metadata.csv + a zip of one recording, three requests
#     and a process-upload each): batches/s, p50/p99 of a batch, errors;
#  3. IDLE keep-alive connections held open after one request each: dropsync's RSS.
#
#   bench/http.sh                         # 1 GiB, 3 reps, 200 batches, 1,000 idle connections
#   SIZE_MIB=256 REPS=5 bench/http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SIZE_MIB=${SIZE_MIB:-1024}
REPS=${REPS:-3}
CONCURRENT=${CONCURRENT:-200}
IDLE=${IDLE:-1000}
BIN=${BIN:-target/release/dropsync}
[ "$BIN" = target/release/dropsync ] && cargo build --release --quiet
for tool in curl rclone; do command -v $tool >/dev/null || { echo "$tool is missing" >&2; exit 1; }; done
python3 -c "import boto3, requests" 2>/dev/null || { echo "pip install boto3 requests" >&2; exit 1; }

W=$(mktemp -d "$PWD/target/dropsync-httpbench.XXXXXX")
cleanup() {
    [ -n "${DS_PID:-}" ] && kill "$DS_PID" 2>/dev/null || true
    [ -n "${RC_PID:-}" ] && kill "$RC_PID" 2>/dev/null || true
    [ -n "${IDLE_PID:-}" ] && kill "$IDLE_PID" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

wav_noise $((SIZE_MIB * 1048576)) "$W/big.wav"
RP=$(free_port)
mkdir -p "$W/rclone/calls"
rclone serve s3 "$W/rclone" --addr "127.0.0.1:$RP" --auth-key AKID,SECRET 2>"$W/rclone.log" &
RC_PID=$!

HP=$(free_port)
mkdir -p "$W/ds"
TOKEN=bench-token-0123456789abcdef
echo "$TOKEN" > "$W/ds/acme.tokens"
echo "admin-token-0123456789abcdef" > "$W/ds/admin.tokens"
cat > "$W/ds/dropsync.toml" <<CFG
state_dir = "$W/ds/var"
[sink]
type = "dir"
path = "$W/ds/var/outbox"
[http]
listen = "127.0.0.1:$HP"
admin_tokens_file = "admin.tokens"
max_connections_per_ip = $((IDLE + 100))
[[tenants]]
id = "acme"
api_tokens_file = "acme.tokens"
# Each upload in progress is one of the tenant's sessions (16 by default).
quota = { sessions = $((CONCURRENT * 2)) }
[tenants.mapping]
conversation_id = "id"
agent = "agent"
contact_time = "time"
recording = "file"
CFG
RUST_LOG=warn "$BIN" run --config "$W/ds/dropsync.toml" 2>"$W/ds.log" &
DS_PID=$!
until curl -s -o /dev/null "http://127.0.0.1:$HP/api/openapi.json"; do sleep 0.1; done
until curl -s -o /dev/null "http://127.0.0.1:$RP/"; do sleep 0.1; done

put_time() {  # $1 = URL; prints seconds of the PUT
    curl -sS --fail -o /dev/null -w '%{time_total}\n' -T "$W/big.wav" "$1"
}
ds_run() {
    sync; sleep 1
    local url
    url=$(curl -sS --fail -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        -d "{\"call_date\":\"2024-08-06\",\"call_time\":\"09:15:00\",\"agent\":\"a\",\"conversation_id\":\"big-$1\"}" \
        "http://127.0.0.1:$HP/api/v2/workspace/acme/conversation/upload_data/" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["upload_url"])')
    put_time "$url"
}
RC_SYNCED=()
rc_run() {
    sync; sleep 1
    local url t0 t1 took
    url=$(python3 - "$RP" "$1" <<'PY'
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:%s" % sys.argv[1], aws_access_key_id="AKID",
                  aws_secret_access_key="SECRET", region_name="us-east-1", config=Config(signature_version="s3v4"))
print(s3.generate_presigned_url("put_object", Params={"Bucket": "calls", "Key": "big-%s.wav" % sys.argv[2]}, ExpiresIn=3600))
PY
)
    t0=$(date +%s.%N)
    took=$(put_time "$url")
    sync
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l >> "$W/rc_synced"
    echo "$took"
}
alternate "$REPS" rc_run ds_run
rc=$(printf '%s\n' "${PEER_RUNS[@]}" | median)
ds=$(printf '%s\n' "${DS_RUNS[@]}" | median)
rcs=$(median < "$W/rc_synced")
printf 'PUT %s MiB: rclone serve s3 %.2f s (%.0f MiB/s; with sync %.2f s)   dropsync %.2f s (%.0f MiB/s, durable)\n' \
    "$SIZE_MIB" "$rc" "$(echo "$SIZE_MIB / $rc" | bc -l)" "$rcs" "$ds" "$(echo "$SIZE_MIB / $ds" | bc -l)"
printf '  ratio rclone / dropsync %.2fx (against rclone + sync %.2fx)  (medians of %s; runs: rclone %s / dropsync %s)\n' \
    "$(echo "$rc / $ds" | bc -l)" "$(echo "$rcs / $ds" | bc -l)" "$REPS" "${PEER_RUNS[*]}" "${DS_RUNS[*]}"
rm -f "$W/big.wav"

# 2. Concurrent batch uploads.
wav_noise 16000 "$W/small.wav"
python3 - "$HP" "$TOKEN" "$CONCURRENT" "$W/small.wav" <<'PY'
import io, sys, time, zipfile, threading, requests
port, token, n, wav = sys.argv[1], sys.argv[2], int(sys.argv[3]), open(sys.argv[4], "rb").read()
base, auth = "http://127.0.0.1:%s" % port, {"Authorization": "Bearer " + token}
def one(i, out):
    s = requests.Session()
    t0 = time.monotonic()
    try:
        r = s.post(base + "/api/v1/calls/upload", json={"metadata_filename": "metadata.csv", "audios_filename": "audios.zip"}, headers=auth)
        r.raise_for_status()
        d = r.json()["data"]
        csv = "id,agent,time,file\nc%d,a,2024-08-06T09:15:00Z,r%d.wav\n" % (i, i)
        z = io.BytesIO()
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr("r%d.wav" % i, wav)
        s.put(d["metadata_upload_url"], data=csv.encode()).raise_for_status()
        s.put(d["audio_upload_url"], data=z.getvalue()).raise_for_status()
        r = s.post(base + "/api/v1/calls/process-upload", json={"metadata_key": d["metadata_key"], "audios_key": d["audio_key"]}, headers=auth)
        r.raise_for_status()
        out[i] = time.monotonic() - t0
    except Exception as e:
        out[i] = e
out = {}
threads = [threading.Thread(target=one, args=(i, out)) for i in range(n)]
t0 = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
wall = time.monotonic() - t0
ok = sorted(v for v in out.values() if isinstance(v, float))
errors = [v for v in out.values() if not isinstance(v, float)]
p = lambda q: ok[min(len(ok) - 1, int(q * len(ok)))] * 1000 if ok else float("nan")
print("%d concurrent batches: %.1f batches/s (%.2f s in all), p50 %.0f ms, p99 %.0f ms, errors %d%s"
      % (n, len(ok) / wall, wall, p(0.5), p(0.99), len(errors), (": %r" % errors[0]) if errors else ""))
PY

# 3. Idle keep-alive connections.
before=$(awk '/VmRSS/ {print $2}' "/proc/$DS_PID/status")
python3 - "$HP" "$IDLE" "$W/idle.ready" <<'PY' &
import socket, sys, time
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /api/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
    held.append(s)
for s in held:
    s.settimeout(10)
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(65536)
open(ready, "w").close()
time.sleep(600)
PY
IDLE_PID=$!
until [ -e "$W/idle.ready" ]; do sleep 0.2; kill -0 "$IDLE_PID" || { echo "the idle client failed" >&2; exit 1; }; done
rss=$(awk '/VmRSS/ {print $2}' "/proc/$DS_PID/status")
printf '%s idle keep-alive connections: dropsync RSS %.1f MiB (%.1f MiB before them)\n' "$IDLE" "$(echo "$rss / 1024" | bc -l)" "$(echo "$before / 1024" | bc -l)"
