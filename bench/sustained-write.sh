#!/usr/bin/env bash
# Sustained, durable writes as a user feels them: a FIXED amount written and flushed,
# timed wall clock (fio start to exit, the final flush included), so a write buffer
# cannot hide the cost. damocles raid5 over four file members against nbdkit (file
# plugin) and qemu-nbd serving one plain file of the same size, all page-cached, in ONE
# run, ROUNDS rounds interleaved (server order rotated), best of the rounds.
#
#   seqwrite  : SIZE (default 2G) of 1 MiB writes, QD16, then one flush (--end_fsync=1)
#   randwrite : RSIZE (default 256M) of random 4 KiB writes, QD16, a flush every 32
#               writes (--fsync=32), and a flush at the end
#
# Each round starts from a settled cache: `sync` and an unmeasured flush of each server.
# DAMOCLES_B=PATH adds damocles-b: another build serving a raid5 of its own four alike
# members, in the same rounds (an A/B of a change).
#
# Usage: bench/sustained-write.sh   (~5 min)   Env: ROUNDS SIZE RSIZE MEMBER DAMOCLES DAMOCLES_B KEEP
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}; SIZE=${SIZE:-2G}; RSIZE=${RSIZE:-256M}; MEMBER=${MEMBER:-1G}
IODEPTH=16; RUNTIME=0; RAMP=0
. bench/lib.sh
need_tools fio:fio nbdkit:nbdkit qemu-nbd:qemu-utils
build_damocles
make_tmpdir damocles-sustained

for i in 1 2 3 4; do truncate -s "$MEMBER" "$T/m$i"; done
"$DAMOCLES" create --sparse --level raid5 "$T/m"{1..4} >"$T/create.out" 2>&1 \
    || { cat "$T/create.out" >&2; exit 1; }
R5=$(array_size "$T/m"{1..4})
truncate -s "$R5" "$T/plain.img"
for s in $SIZE $RSIZE; do
    [ "$(numfmt --from=iec "$s")" -le "$R5" ] || { echo "error: $s exceeds the array ($R5 B)" >&2; exit 1; }
done

nbdkit --foreground --exit-with-parent --unix "$T/nbdkit.sock" -P "$T/nbdkit.pid" \
    file file="$T/plain.img" cache=default >"$T/nbdkit.out" 2>"$T/nbdkit.err" &
PIDS+=($!); NAMES+=(nbdkit)
wait_pidfile nbdkit "$!" "$T/nbdkit.pid"
URI[nbdkit]="nbd+unix:///?socket=$T/nbdkit.sock"
qemu-nbd -f raw -t --socket="$T/qemu-nbd.sock" --pid-file="$T/qemu-nbd.pid" \
    --cache=writeback --aio=threads --detect-zeroes=off --discard=ignore \
    "$T/plain.img" >"$T/qemu-nbd.out" 2>"$T/qemu-nbd.err" &
PIDS+=($!); NAMES+=(qemu-nbd)
wait_pidfile qemu-nbd "$!" "$T/qemu-nbd.pid"
URI[qemu-nbd]="nbd+unix:///?socket=$T/qemu-nbd.sock"
start_damocles damocles-raid5 "$T/m"{1..4}
SERVERS=(nbdkit qemu-nbd damocles-raid5)
if [ -n "${DAMOCLES_B:-}" ]; then
    DAMOCLES_B=$(realpath "$DAMOCLES_B")
    for i in 5 6 7 8; do truncate -s "$MEMBER" "$T/m$i"; done
    "$DAMOCLES_B" create --sparse --level raid5 "$T/m"{5..8} >"$T/create-b.out" 2>&1 \
        || { cat "$T/create-b.out" >&2; exit 1; }
    A=$DAMOCLES; DAMOCLES=$DAMOCLES_B; start_damocles damocles-b "$T/m"{5..8}; DAMOCLES=$A
    SERVERS+=(damocles-b)
fi

echo "## $(nproc) cores, $T ($fstype); raid5 of 4 x $MEMBER = $R5 B; plain file $R5 B"
echo "## seqwrite $SIZE (1M, QD16, end flush); randwrite $RSIZE (4k, QD16, flush/32); best of $ROUNDS"

# timed OUT SERVER SIZE FIO-ARGS... — wall-clock ms of one fixed-size fio run.
timed() {
    local out=$1 s=$2 size=$3 t0 t1; shift 3
    sync
    fio --name=settle --ioengine=nbd --uri="${URI[$s]}" --rw=write --bs=4k --size=4k \
        --end_fsync=1 >/dev/null 2>&1 || true
    t0=$(date +%s%N)
    TEST_SIZE=$size runfio "$out" "$s" "$@"
    t1=$(date +%s%N)
    [ -f "$out" ] && echo $(( (t1 - t0) / 1000000 )) >"$out.ms"
}

n=${#SERVERS[@]}
for r in $(seq "$ROUNDS"); do
    for k in $(seq 0 $((n - 1))); do
        s=${SERVERS[$(((k + r - 1) % n))]}
        echo "## round $r: $s" >&2
        timed "$T/res/seq.$s.$r.json" "$s" "$SIZE" --rw=write --bs=1M --end_fsync=1
        timed "$T/res/rand.$s.$r.json" "$s" "$RSIZE" --rw=randwrite --bs=4k --fsync=32 \
            --end_fsync=1
    done
done
check_alive

python3 - "$T/res" "$ROUNDS" "$(numfmt --from=iec "$SIZE")" "$(numfmt --from=iec "$RSIZE")" "${SERVERS[@]}" <<'PY'
import os, sys
res, rounds, size, rsize = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
servers = sys.argv[5:]
best = {}
for w, n in (("seq", size), ("rand", rsize)):
    for s in servers:
        ms = [int(open(os.path.join(res, f"{w}.{s}.{r}.json.ms")).read())
              for r in range(1, rounds + 1)
              if os.path.exists(os.path.join(res, f"{w}.{s}.{r}.json.ms"))]
        best[w, s] = n / (min(ms) / 1000) / 1e6 if ms else 0.0
print(f"| written and flushed (best of {rounds}, wall clock) | nbdkit MB/s | qemu-nbd MB/s | damocles raid5 MB/s | damocles / nbdkit |")
print("|---|---:|---:|---:|---:|")
for w, label in (("seq", "1 MiB sequential, QD16, end flush"), ("rand", "4 KiB random, QD16, flush every 32")):
    k, q, d = best[w, "nbdkit"], best[w, "qemu-nbd"], best[w, "damocles-raid5"]
    print(f"| {label} | {k:.0f} | {q:.0f} | {d:.0f} | {d / k if k else 0:.2f} |")
if "damocles-b" in servers:
    print()
    print("| damocles-b (DAMOCLES_B) | MB/s | / nbdkit | / damocles-raid5 |")
    print("|---|---:|---:|---:|")
    for w, label in (("seq", "1 MiB sequential"), ("rand", "4 KiB random, flush every 32")):
        k, d, b = best[w, "nbdkit"], best[w, "damocles-raid5"], best[w, "damocles-b"]
        print(f"| {label} | {b:.0f} | {b / k if k else 0:.2f} | {b / d if d else 0:.2f} |")
PY
