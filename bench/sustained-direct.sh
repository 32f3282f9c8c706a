#!/usr/bin/env bash
# Sustained, durable writes on loop devices with O_DIRECT members: a FIXED amount written
# and flushed, timed wall clock (start to exit, the final flush included). Four loop
# devices (each over a fully allocated file in BENCH_TMPDIR, default /var/tmp, opened by
# the loop driver with --direct-io=on, so a write reaches the disk and not a page cache
# below) are the members. In ONE run, ROUNDS rounds interleaved (order rotated), best of
# the rounds:
#
#   members         : fio --direct=1 writing 4 loop devices like the members (four more,
#                     over their own files: writing the members would erase the array) in
#                     parallel, SIZE/3 each (what raid5 writes for SIZE of data: 4/3 of
#                     it), 1 MiB, QD16 per device (libaio), flushed at the end — the
#                     members' own aggregate
#   damocles-raid5  : damocles serve (block devices: O_DIRECT) of a raid5 over them, SIZE of
#                     1 MiB writes through fio's nbd engine, QD16, one flush at the end
#   damocles-buffered : the same with serve --buffered (members through the page cache)
#   nbdkit / qemu-nbd : one plain loop device of the array's size (a fifth), nbdkit file
#                     plugin (page cache) and qemu-nbd --cache=none --aio=native (O_DIRECT)
#
# MODE=engines instead compares ways of doing member I/O on the same loop devices, fixed
# size, direct, flushed: one blocking write at a time (64 KiB, 1 MiB), psync with one
# thread per request in flight (what damocles' guard workers do) against io_uring and
# libaio with the same number in flight from one thread, and 4 KiB pieces against the same
# bytes coalesced into 64 KiB requests.
#
# DAMOCLES_B=PATH adds damocles-b: the same raid5 served direct by another build (an A/B
# of a change in the same run).
#
# Usage: bench/sustained-direct.sh   (needs root: losetup; ~5 min)
# Env: ROUNDS SIZE MEMBER DAMOCLES DAMOCLES_B KEEP BENCH_TMPDIR MODE=sustained|engines
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}; SIZE=${SIZE:-2G}; MEMBER=${MEMBER:-1G}; MODE=${MODE:-sustained}
IODEPTH=16; RUNTIME=0; RAMP=0
. bench/lib.sh
need_tools fio:fio nbdkit:nbdkit qemu-nbd:qemu-utils losetup:mount
[ "$(id -u)" -eq 0 ] || { echo "error: loop devices need root" >&2; exit 1; }
build_damocles
make_tmpdir damocles-direct

LOOPS=()
detach_loops() {
    local d
    for d in "${LOOPS[@]}"; do losetup -d "$d" 2>/dev/null || true; done
}
# Servers first (they hold the devices), then the loop devices, then the tmpdir.
trap 'rc=$?; for i in "${!PIDS[@]}"; do stop_server "$i"; done; PIDS=(); detach_loops; (exit $rc); bench_cleanup' EXIT

# new_loop FILE SIZE — a loop device over a fully allocated FILE, direct to its file.
new_loop() {
    fallocate -l "$2" "$1"
    losetup --find --show --direct-io=on "$1"
}

for i in 1 2 3 4; do LOOPS+=("$(new_loop "$T/m$i" "$MEMBER")"); done
M=("${LOOPS[@]:0:4}")
# What fio writes raw: in engines mode the members themselves, otherwise four alike.
RAW=("${M[@]}")

# timed_fio OUT FIO-ARGS... — wall-clock ms of one fixed-size fio run into OUT.ms.
timed_fio() {
    local out=$1 t0 t1 st=0; shift
    sync
    t0=$(date +%s%N)
    timeout -k 10 600 fio --output-format=json --output="$out" "$@" >"$out.log" 2>&1 || st=$?
    t1=$(date +%s%N)
    if [ "$st" -ne 0 ]; then
        FAILS=$((FAILS + 1)); echo "  !! fio failed (status $st): $*" >&2; tail -5 "$out.log" >&2
        return 0
    fi
    echo $(( (t1 - t0) / 1000000 )) >"$out.ms"
}

# per_device ARGS — one fio job per member device after the global ARGS.
per_device() {
    local d jobs=()
    for d in "${RAW[@]}"; do jobs+=(--name="${d##*/}" --filename="$d"); done
    echo "${jobs[@]}"
}

if [ "$MODE" = engines ]; then
    ESIZE=${ESIZE:-256M}
    echo "## $(nproc) cores, $T ($fstype); 4 loop devices (--direct-io=on) of $MEMBER"
    echo "## $ESIZE per device, direct, end flush, the 4 in parallel; best of $ROUNDS"
    # name: fio args
    declare -A E=(
        [psync-64k-1thr]="--ioengine=psync --bs=64k"
        [psync-1m-1thr]="--ioengine=psync --bs=1M"
        [psync-64k-16thr]="--ioengine=psync --bs=64k --numjobs=16 --size=$(( $(numfmt --from=iec "$ESIZE") / 16 ))"
        [io_uring-64k-qd16]="--ioengine=io_uring --bs=64k --iodepth=16"
        [libaio-64k-qd16]="--ioengine=libaio --bs=64k --iodepth=16"
        [psync-4k-16thr]="--ioengine=psync --bs=4k --numjobs=16 --size=$(( $(numfmt --from=iec "$ESIZE") / 16 ))"
        [io_uring-4k-qd16]="--ioengine=io_uring --bs=4k --iodepth=16"
    )
    ORDER=(psync-64k-1thr psync-1m-1thr psync-64k-16thr io_uring-64k-qd16 libaio-64k-qd16 psync-4k-16thr io_uring-4k-qd16)
    for r in $(seq "$ROUNDS"); do
        for k in $(seq 0 $((${#ORDER[@]} - 1))); do
            e=${ORDER[$(((k + r - 1) % ${#ORDER[@]}))]}
            echo "## round $r: $e" >&2
            # Each job writes its own slice: offset_increment keeps 16 threads apart.
            # shellcheck disable=SC2046,SC2086
            timed_fio "$T/res/$e.$r.json" --direct=1 --rw=write --size="$ESIZE" \
                --offset_increment=$(( $(numfmt --from=iec "$ESIZE") / 16 )) \
                --end_fsync=1 --group_reporting ${E[$e]} $(per_device)
        done
    done
    python3 - "$T/res" "$ROUNDS" "$(numfmt --from=iec "$ESIZE")" "${ORDER[@]}" <<'PY'
import os, sys
res, rounds, size, order = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
print(f"| member I/O, 4 loop devices in parallel, {size >> 20} MiB each, direct, flushed (best of {rounds}) | MB/s | vs psync 64k |")
print("|---|---:|---:|")
best = {}
for e in order:
    ms = [int(open(os.path.join(res, f"{e}.{r}.json.ms")).read()) for r in range(1, rounds + 1)
          if os.path.exists(os.path.join(res, f"{e}.{r}.json.ms"))]
    best[e] = 4 * size / (min(ms) / 1000) / 1e6 if ms else 0.0
for e in order:
    base = best["psync-64k-16thr"]
    print(f"| {e} | {best[e]:.0f} | {best[e] / base if base else 0:.2f} |")
PY
    exit 0
fi

"$DAMOCLES" create --level raid5 "${M[@]}" >"$T/create.out" 2>&1 \
    || { cat "$T/create.out" >&2; exit 1; }
R5=$(array_size "${M[@]}")
[ "$(numfmt --from=iec "$SIZE")" -le "$R5" ] || { echo "error: $SIZE exceeds the array ($R5 B)" >&2; exit 1; }
LOOPS+=("$(new_loop "$T/plain.img" "$R5")")
PLAIN=${LOOPS[4]}
RAW=()
for i in 1 2 3 4; do RAW+=("$(new_loop "$T/raw$i" "$MEMBER")"); done
LOOPS+=("${RAW[@]}")
PER=$(( $(numfmt --from=iec "$SIZE") / 3 / 1048576 * 1048576 ))

nbdkit --foreground --exit-with-parent --unix "$T/nbdkit.sock" -P "$T/nbdkit.pid" \
    file file="$PLAIN" cache=default >"$T/nbdkit.out" 2>"$T/nbdkit.err" &
PIDS+=($!); NAMES+=(nbdkit)
wait_pidfile nbdkit "$!" "$T/nbdkit.pid"
URI[nbdkit]="nbd+unix:///?socket=$T/nbdkit.sock"
qemu-nbd -f raw -t --socket="$T/qemu-nbd.sock" --pid-file="$T/qemu-nbd.pid" \
    --cache=none --aio=native --detect-zeroes=off --discard=ignore \
    "$PLAIN" >"$T/qemu-nbd.out" 2>"$T/qemu-nbd.err" &
PIDS+=($!); NAMES+=(qemu-nbd)
wait_pidfile qemu-nbd "$!" "$T/qemu-nbd.pid"
URI[qemu-nbd]="nbd+unix:///?socket=$T/qemu-nbd.sock"

# The two damocles servers share the members: only one runs at a time.
serve_damocles() {
    stop_named damocles-raid5; stop_named damocles-buffered; stop_named damocles-b
    case $1 in
        damocles-raid5) start_damocles damocles-raid5 "${M[@]}" ;;
        damocles-buffered) start_damocles damocles-buffered --buffered "${M[@]}" ;;
        damocles-b) local a=$DAMOCLES; DAMOCLES=$DAMOCLES_B; start_damocles damocles-b "${M[@]}"; DAMOCLES=$a ;;
    esac
}

echo "## $(nproc) cores, $T ($fstype); loop devices --direct-io=on; raid5 of 4 x $MEMBER = $R5 B; plain loop device $R5 B"
echo "## $SIZE of 1 MiB writes, QD16, one flush at the end, wall clock; members: $PER B each, 4 in parallel; best of $ROUNDS"

SERVERS=(members damocles-raid5 damocles-buffered nbdkit qemu-nbd)
[ -n "${DAMOCLES_B:-}" ] && { DAMOCLES_B=$(realpath "$DAMOCLES_B"); SERVERS+=(damocles-b); }
n=${#SERVERS[@]}
for r in $(seq "$ROUNDS"); do
    for k in $(seq 0 $((n - 1))); do
        s=${SERVERS[$(((k + r - 1) % n))]}
        echo "## round $r: $s" >&2
        case $s in
            members)
                # shellcheck disable=SC2046
                timed_fio "$T/res/seq.$s.$r.json" --ioengine=libaio --direct=1 --rw=write \
                    --bs=1M --iodepth=16 --size="$PER" --end_fsync=1 $(per_device)
                continue ;;
            damocles-*) serve_damocles "$s" ;;
        esac
        # An unmeasured flush settles what the previous server left.
        fio --name=settle --ioengine=nbd --uri="${URI[$s]}" --rw=write --bs=4k --size=4k \
            --end_fsync=1 >/dev/null 2>&1 || true
        sync
        t0=$(date +%s%N)
        TEST_SIZE=$SIZE runfio "$T/res/seq.$s.$r.json" "$s" --rw=write --bs=1M --end_fsync=1
        t1=$(date +%s%N)
        [ -f "$T/res/seq.$s.$r.json" ] && echo $(( (t1 - t0) / 1000000 )) >"$T/res/seq.$s.$r.json.ms"
        case $s in damocles-*) grep -h VmHWM "/proc/$(server_pid "$s")/status" >"$T/res/hwm.$s.$r" || true ;; esac
    done
done
check_alive

python3 - "$T/res" "$ROUNDS" "$(numfmt --from=iec "$SIZE")" "$PER" <<'PY'
import os, sys
res, rounds, size, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def best(s):
    ms = [int(open(os.path.join(res, f"seq.{s}.{r}.json.ms")).read()) for r in range(1, rounds + 1)
          if os.path.exists(os.path.join(res, f"seq.{s}.{r}.json.ms"))]
    return min(ms) / 1000 if ms else None
def hwm(s):
    v = []
    for r in range(1, rounds + 1):
        p = os.path.join(res, f"hwm.{s}.{r}")
        if os.path.exists(p) and open(p).read().split():
            v.append(int(open(p).read().split()[1]) >> 10)
    return f"{max(v)} MiB" if v else "-"
mem = best("members")
agg = 4 * per / mem / 1e6 if mem else 0.0
print(f"| {size >> 20} MiB written and flushed (best of {rounds}, wall clock) | s | MB/s of data | vs members' aggregate | peak RSS |")
print("|---|---:|---:|---:|---:|")
print(f"| members: fio --direct=1 on the 4 loop devices, {per >> 20} MiB each ({4 * per >> 20} MiB) | {mem or 0:.2f} | {agg:.0f} (aggregate) | 1.00 | - |")
for s, label in (("damocles-raid5", "damocles raid5 on them (O_DIRECT members)"),
                 ("damocles-buffered", "damocles raid5 on them, serve --buffered"),
                 ("damocles-b", "damocles raid5 on them, O_DIRECT, build DAMOCLES_B"),
                 ("nbdkit", "nbdkit file on one loop device"),
                 ("qemu-nbd", "qemu-nbd --cache=none on one loop device")):
    t = best(s)
    if t is None and s == "damocles-b":
        continue
    mbs = size / t / 1e6 if t else 0.0
    print(f"| {label} | {t or 0:.2f} | {mbs:.0f} | {mbs / agg if agg else 0:.2f} | {hwm(s) if s.startswith('damocles') else '-'} |")
PY
