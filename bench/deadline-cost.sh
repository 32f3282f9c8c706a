#!/usr/bin/env bash
# What the member-request deadlines (slow/fail limits, per-member worker threads) cost a
# healthy array: two damocles binaries, BEFORE (without the machinery) and AFTER (with
# it), each serving its own raid5 of four page-cached file members, in ONE run. fio's
# nbd engine (QD16, one job) on the first TEST_SIZE bytes, written and flushed first:
# random 4 KiB reads and sequential 1 MiB reads, ROUNDS rounds interleaved (the order
# of the two servers alternates each round). The table gives the median IOPS and the
# server's median CPU time per I/O (user + system, all threads, over the fio run).
#
# Usage: BEFORE=path/to/old/damocles bench/deadline-cost.sh   (~3 min)
#   BEFORE   binary without the deadline machinery (e.g. built from commit 2766540 in a
#            worktree: git worktree add /tmp/before 2766540 && cargo build --release
#            --manifest-path /tmp/before/Cargo.toml -p damocles)
#   AFTER    binary with it (default: this tree, built)
#   Env: ROUNDS RUNTIME RAMP TEST_SIZE MEMBER KEEP
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}; RUNTIME=${RUNTIME:-6}; RAMP=${RAMP:-1}
IODEPTH=16; TEST_SIZE=${TEST_SIZE:-512M}; MEMBER=${MEMBER:-256M}
: "${BEFORE:?set BEFORE to the damocles binary to compare against}"
. bench/lib.sh
need_tools fio:fio
DAMOCLES=${AFTER:-}
build_damocles
AFTER=$DAMOCLES
BEFORE=$(realpath "$BEFORE")
make_tmpdir damocles-deadline-cost

for v in before after; do
    DAMOCLES=$BEFORE; [ $v = after ] && DAMOCLES=$AFTER
    for i in 0 1 2 3; do truncate -s "$MEMBER" "$T/$v-m$i"; done
    sparse=(); "$DAMOCLES" create --help | grep -q -- --sparse && sparse=(--sparse)
    "$DAMOCLES" create "${sparse[@]}" --level raid5 "$T/$v-m"{0..3} >"$T/$v.create" 2>&1 \
        || { cat "$T/$v.create" >&2; exit 1; }
    start_damocles "$v" "$T/$v-m"{0..3}
    fio --name=fill --ioengine=nbd --uri="${URI[$v]}" --rw=write --bs=1M --iodepth=16 \
        --size="$TEST_SIZE" --end_fsync=1 >"$T/$v.fill.log" 2>&1
done
sync

measure() { # NAME ROUND WORKLOAD FIO-ARGS...
    local n=$1 r=$2 w=$3 pid c0 c1; shift 3
    pid=$(server_pid "$n")
    c0=$(cpu_ticks "$pid")
    runfio "$T/res/$n.$w.$r.json" "$n" "$@" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP"
    c1=$(cpu_ticks "$pid")
    echo $((c1 - c0)) >"$T/res/$n.$w.$r.ticks"
}

for r in $(seq "$ROUNDS"); do
    order="before after"; [ $((r % 2)) = 0 ] && order="after before"
    for w in randread seqread; do
        for v in $order; do
            case $w in
                randread) measure "$v" "$r" "$w" --rw=randread --bs=4k ;;
                seqread) measure "$v" "$r" "$w" --rw=read --bs=1M ;;
            esac
        done
    done
done
check_alive

python3 - "$T/res" "$ROUNDS" "$RUNTIME" "$RAMP" "$(getconf CLK_TCK)" <<'PY'
import json, os, statistics, sys
res, rounds, runtime, ramp, hz = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
print(f"| workload (QD16, median of {rounds}) | before IOPS | after IOPS | after/before | before CPU µs/IO | after CPU µs/IO |")
print("|---|---:|---:|---:|---:|---:|")
for w in ("randread", "seqread"):
    row = {}
    for v in ("before", "after"):
        iops, cpu = [], []
        for r in range(1, rounds + 1):
            p = os.path.join(res, f"{v}.{w}.{r}.json")
            if not os.path.exists(p):
                continue
            j = json.load(open(p))["jobs"][0]["read"]
            ticks = int(open(os.path.join(res, f"{v}.{w}.{r}.ticks")).read())
            ios = j["iops"] * runtime
            iops.append(j["iops"])
            # ticks cover ramp + runtime; scale to the measured part
            cpu.append(ticks / hz * 1e6 * runtime / (runtime + ramp) / max(ios, 1))
        row[v] = (statistics.median(iops), statistics.median(cpu)) if iops else (0, 0)
    b, a = row["before"], row["after"]
    print(f"| {w} | {b[0]:.0f} | {a[0]:.0f} | {a[0] / max(b[0], 1):.2f} | {b[1]:.1f} | {a[1]:.1f} |")
PY
