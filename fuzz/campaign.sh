#!/usr/bin/env bash
# Runs fuzz targets one after another on one core and appends each run's figures (minutes,
# executions, peak RSS, findings) to work/campaign.log, the numbers RELIABILITY.md quotes.
#
#   fuzz/campaign.sh [MINUTES] [TARGET...]     default: 30 minutes, every target
set -euo pipefail
cd "$(dirname "$0")"

minutes=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(audio metadata ftp_listing config sftp zip http_form)
fi
command -v cargo-fuzz >/dev/null || {
    echo "cargo-fuzz missing: rustup toolchain install nightly && cargo install cargo-fuzz" >&2
    exit 1
}

mkdir -p work
log=work/campaign.log
for target in "${targets[@]}"; do
    mkdir -p "work/$target" "artifacts/$target"
    out="work/$target.out"
    before=$(find "artifacts/$target" -type f | wc -l)
    started=$(date +%s)
    status=0
    cargo +nightly fuzz run -O "$target" "$PWD/work/$target" "$PWD/corpus/$target" -- \
        -max_total_time=$((minutes * 60)) -timeout=1 -rss_limit_mb=512 -print_final_stats=1 \
        >"$out" 2>&1 || status=$?
    took=$((($(date +%s) - started) / 60))
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out" | grep -o '[0-9]*$' || echo '?')
    rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$out" | grep -o '[0-9]*$' || echo '?')
    findings=$(($(find "artifacts/$target" -type f | wc -l) - before))
    printf '%s %s minutes=%s executions=%s peak_rss_mb=%s exit=%s new_artifacts=%s\n' \
        "$(date -u +%FT%TZ)" "$target" "$took" "$runs" "$rss" "$status" "$findings" | tee -a "$log"
done
