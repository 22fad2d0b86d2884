#!/usr/bin/env bash
# The pipeline benchmark (benches/pipeline.rs) of this checkout against another commit, both
# release builds, run alternately on this machine: recordings/s at arrival and conversations/s
# from the CSV's arrival to the last forward, medians of REPS, and the ratios.
#
#   bench/pipeline-compare.sh                 # against 075fcc5 (before fair intake), 30,000 calls
#   BASE=HEAD~3 N=100000 REPS=5 bench/pipeline-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BASE=${BASE:-075fcc5}
N=${N:-30000}
REPS=${REPS:-3}
BASE_DIR=${BASE_DIR:-target/bench-base}

if [ ! -d "$BASE_DIR" ]; then
    git worktree add -f --detach "$BASE_DIR" "$BASE" >/dev/null
else
    git -C "$BASE_DIR" checkout -q --detach "$BASE"
fi
echo "building $BASE and this checkout (release)"
(cd "$BASE_DIR" && CARGO_TARGET_DIR="$PWD/target" cargo build --release --benches --quiet)
cargo build --release --benches --quiet
bench_bin() { ls -t "$1"/release/deps/pipeline-* | grep -v '\.d$' | head -1; }
OLD=$(bench_bin "$BASE_DIR/target")
NEW=$(bench_bin target)

# run BIN: prints "arrival_files_per_s conversations_per_s"
run() {
    "$1" --conversations "$N" --rows-million 0 2>/dev/null | awk '/^pipeline:/ {
        for (i = 1; i <= NF; i++) {
            if ($i == "files/s);") arr = substr($(i-1), 2)
            if ($i == "conversations/s;") conv = $(i-1)
        }
        print arr, conv
    }'
}
OLD_A=(); OLD_C=(); NEW_A=(); NEW_C=()
for rep in $(seq "$REPS"); do
    for who in $( [ $((rep % 2)) -eq 1 ] && echo "old new" || echo "new old" ); do
        if [ "$who" = old ]; then read -r a c < <(run "$OLD"); OLD_A+=("$a"); OLD_C+=("$c")
        else read -r a c < <(run "$NEW"); NEW_A+=("$a"); NEW_C+=("$c"); fi
        echo "  rep $rep $who: $a recordings/s at arrival, $c conversations/s"
    done
done
med() { printf '%s\n' "$@" | median; }
oa=$(med "${OLD_A[@]}"); oc=$(med "${OLD_C[@]}"); na=$(med "${NEW_A[@]}"); nc=$(med "${NEW_C[@]}")
echo "pipeline, $N conversations, medians of $REPS:"
echo "  arrival:       $BASE $oa recordings/s, this $na recordings/s, ratio $(awk "BEGIN {printf \"%.3f\", $na/$oa}")"
echo "  conversations: $BASE $oc /s, this $nc /s, ratio $(awk "BEGIN {printf \"%.3f\", $nc/$oc}")"
