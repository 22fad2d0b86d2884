# Shared by the benchmark scripts (sourced, not run).

# A loopback port free right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The median of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# alternate REPS PEER_RUN DROPSYNC_RUN: runs both REPS times, the peer first on odd repetitions
# and dropsync first on even ones, so neither always gets the warmer cache. Each run gets the
# repetition number and prints its seconds; they land in PEER_RUNS and DS_RUNS.
alternate() {
    local reps=$1 peer=$2 ds=$3 rep
    PEER_RUNS=(); DS_RUNS=()
    for rep in $(seq "$reps"); do
        if [ $((rep % 2)) -eq 1 ]; then
            PEER_RUNS+=("$("$peer" "$rep")"); DS_RUNS+=("$("$ds" "$rep")")
        else
            DS_RUNS+=("$("$ds" "$rep")"); PEER_RUNS+=("$("$peer" "$rep")")
        fi
    done
}

# wav_noise BYTES FILE: a WAV file (8 kHz, 8-bit mono PCM) of BYTES bytes of noise, so that
# intake reads a duration instead of rejecting a "recording" that is not audio.
wav_noise() {
    python3 - "$1" "$2" <<'PY'
import os, sys
n, path = int(sys.argv[1]), sys.argv[2]
data = n - 44
with open(path, "wb") as f:
    f.write(b"RIFF" + (36 + data).to_bytes(4, "little") + b"WAVEfmt \x10\0\0\0\x01\0\x01\0"
            + (8000).to_bytes(4, "little") * 2 + b"\x01\0\x08\0data" + data.to_bytes(4, "little"))
    while data > 0:
        k = min(data, 1 << 20)
        f.write(os.urandom(k))
        data -= k
PY
}
