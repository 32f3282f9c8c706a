#!/usr/bin/env bash
# Write bursts with pauses between them, as a VM's writes come: two damocles builds (A/B),
# each serving a raid5 of four tmpfs members (so the members' storage does not decide),
# take turns writing SIZE (default 2G) of 1 MiB writes at QD16 and one flush, timed wall
# clock, with PAUSE seconds (default 8) of quiet after each burst. Reports each burst's
# wall time, the server's CPU time (user + system) and its peak RSS. The first burst or
# two of each server land on fresh member space (tmpfs allocation); compare the later ones.
#
# Usage: DAMOCLES=PATH DAMOCLES_B=PATH bench/write-bursts.sh   (~2 min)
#   Env: ROUNDS (4) SIZE (2G) PAUSE (8) DIR (/dev/shm)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DAMOCLES:?set DAMOCLES to the A build}" "${DAMOCLES_B:?set DAMOCLES_B to the B build}"
ROUNDS=${ROUNDS:-4}; SIZE=${SIZE:-2G}; PAUSE=${PAUSE:-8}
command -v fio >/dev/null || { echo "error: fio is missing (apt-get install fio)" >&2; exit 1; }
D=$(mktemp -d "${DIR:-/dev/shm}/damocles-bursts.XXXXXX")
declare -A BIN=([A]=$(realpath "$DAMOCLES") [B]=$(realpath "$DAMOCLES_B")) PID
cleanup() { for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done; wait; rm -rf "$D"; }
trap cleanup EXIT
for v in A B; do
    m=(); for i in 1 2 3 4; do truncate -s 1G "$D/$v$i"; m+=("$D/$v$i"); done
    "${BIN[$v]}" create --sparse --level raid5 "${m[@]}" >"$D/$v.create" 2>&1 \
        || { cat "$D/$v.create" >&2; exit 1; }
    "${BIN[$v]}" serve --socket "$D/$v.sock" "${m[@]}" >"$D/$v.out" 2>"$D/$v.err" &
    PID[$v]=$!
    for _ in $(seq 100); do grep -q '^serving ' "$D/$v.out" && break; sleep 0.1; done
    grep -q '^serving ' "$D/$v.out" || { echo "error: $v did not start" >&2; cat "$D/$v.err" >&2; exit 1; }
done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
echo "## $(nproc) cores; raid5 of 4 x 1G on $(stat -f -c %T "$D"); $SIZE of 1 MiB writes, QD16, end flush; $PAUSE s pause after each"
echo "| round | build | wall s | server CPU s | peak RSS MiB |"
echo "|---:|---|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
    for v in A B; do
        c0=$(cpu "${PID[$v]}"); t0=$(date +%s%N)
        fio --name=burst --ioengine=nbd --uri="nbd+unix:///?socket=$D/$v.sock" --rw=write \
            --bs=1M --iodepth=16 --size="$SIZE" --end_fsync=1 --output=/dev/null
        t1=$(date +%s%N); c1=$(cpu "${PID[$v]}")
        hwm=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/${PID[$v]}/status")
        awk -v r="$r" -v v="$v" -v w=$(( (t1 - t0) / 1000000 )) -v c=$((c1 - c0)) -v t="$tick" -v h="$hwm" \
            'BEGIN { printf "| %d | %s | %.2f | %.2f | %d |\n", r, v, w / 1000, c / t, h }'
        sleep "$PAUSE"
    done
done
