#!/usr/bin/env bash
# Duration probing throughput: `dropsync probe` (what intake runs on every recording) over N
# recordings of each format, against ffprobe (one process per file, as scripts call it) on the
# same files in the same run. Release build; files made by ffmpeg, in the page cache.
#
#   bench/probe.sh                    # 1,000 files of each format, 60 s of audio each
#   N=200 SECONDS_LONG=600 bench/probe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}
SECONDS_LONG=${SECONDS_LONG:-60}
PEER_N=${PEER_N:-100}            # ffprobe is timed on this many of them (a process per file)
FORMATS=${FORMATS:-"wav mp3 ogg opus flac aiff au gsm m4a"}
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || { echo "apt install ffmpeg" >&2; exit 1; }
cargo build --release --quiet
BIN=$PWD/target/release/dropsync
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

codec() {
    case $1 in
        ogg) echo "-c:a libvorbis" ;;
        opus) echo "-c:a libopus" ;;
        au) echo "-c:a pcm_mulaw -f au" ;;
        gsm) echo "-c:a libgsm -f gsm" ;;
        *) echo "" ;;
    esac
}
now() { date +%s.%N; }

printf '%-6s %12s %14s %14s %8s\n' format "file bytes" "dropsync f/s" "ffprobe f/s" ratio
for ext in $FORMATS; do
    mkdir -p "$W/$ext"
    # shellcheck disable=SC2046
    ffmpeg -v error -y -f lavfi -i "sine=frequency=440:sample_rate=8000:duration=$SECONDS_LONG" -ac 1 \
        $(codec "$ext") "$W/$ext/f0.$ext"
    # Copies, not links: each probe opens its own file, as intake does.
    for i in $(seq 1 $((N - 1))); do cp "$W/$ext/f0.$ext" "$W/$ext/f$i.$ext"; done
    cat "$W/$ext"/* >/dev/null
    t0=$(now)
    "$BIN" probe "$W/$ext"/* > "$W/$ext.out"
    t1=$(now)
    ok=$(grep -c " ms$" "$W/$ext.out" || true)
    [ "$ok" -eq "$N" ] || { echo "$ext: only $ok of $N probed"; head -3 "$W/$ext.out"; exit 1; }
    t2=$(now)
    for i in $(seq 0 $((PEER_N - 1))); do
        ffprobe -v error -show_entries format=duration -of csv=p=0 "$W/$ext/f$i.$ext" >/dev/null
    done
    t3=$(now)
    ours=$(awk "BEGIN {print $N / ($t1 - $t0)}")
    peer=$(awk "BEGIN {print $PEER_N / ($t3 - $t2)}")
    printf '%-6s %12s %14.0f %14.0f %7.1fx\n' "$ext" "$(stat -c %s "$W/$ext/f0.$ext")" "$ours" "$peer" \
        "$(awk "BEGIN {print $ours / $peer}")"
    rm -rf "${W:?}/$ext"
done
