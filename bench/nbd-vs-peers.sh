#!/usr/bin/env bash
# Compare damocles' NBD server with nbdkit (file plugin) and qemu-nbd, all
# driven by fio's nbd engine (libnbd, one connection, QD16) in ONE run.
#
#   nbdkit, qemu-nbd : one plain file, sized like the damocles raid5 array
#   damocles-raid0   : raid0 over 4 file members
#   damocles-raid5   : raid5 over 4 file members
# All files live in a tmpdir on the local disk (page cache, no O_DIRECT).
# Only the first TEST_SIZE bytes are used, and they are written through each
# server first, so reads never hit holes / never-written damocles chunks.
#
# Workloads: seq 1 MiB read/write, random 4 KiB read/write, iodepth 16.
# Each (server, workload) runs ROUNDS times, interleaved (workload by
# workload, servers round-robin with the order rotated each round); the table
# shows medians. Prints the issue's targets as ratio lines with PASS/MISS.
#
# Usage: bench/nbd-vs-peers.sh            (~8-9 min)
#        QUICK=1 bench/nbd-vs-peers.sh    (~2 min: 1 round, 3 s runs)
# Env:   ROUNDS RUNTIME RAMP IODEPTH MEMBER_SIZE TEST_SIZE
#        SERVERS="nbdkit damocles-raid5" WORKLOADS="seqwrite" (subsets)
#        BENCH_TMPDIR (parent of the tmpdir, default /var/tmp)
#        DAMOCLES=/path/to/binary (skip the cargo build) KEEP=1 (keep tmpdir)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${QUICK:-0}" = 1 ]; then
    ROUNDS=${ROUNDS:-1}; RUNTIME=${RUNTIME:-3}; RAMP=${RAMP:-1}
else
    ROUNDS=${ROUNDS:-3}; RUNTIME=${RUNTIME:-8}; RAMP=${RAMP:-1}
fi
IODEPTH=${IODEPTH:-16}
MEMBER_SIZE=${MEMBER_SIZE:-512M}
TEST_SIZE=${TEST_SIZE:-1G}

. bench/lib.sh

# ---------------------------------------------------------------- tools
need_tools fio:fio nbdkit:nbdkit qemu-nbd:qemu-utils
build_damocles

# ---------------------------------------------------------------- tmpdir
make_tmpdir damocles-nbd-bench

# ---------------------------------------------------------------- arrays / files
for lvl in raid0 raid5; do
    for i in 1 2 3 4; do truncate -s "$MEMBER_SIZE" "$T/$lvl-m$i"; done
    "$DAMOCLES" create --level "$lvl" "$T/$lvl-m"{1..4} >"$T/$lvl.create" 2>&1 \
        || { cat "$T/$lvl.create" >&2; exit 1; }
done
R5_SIZE=$(array_size "$T/raid5-m"{1..4})
R0_SIZE=$(array_size "$T/raid0-m"{1..4})
truncate -s "$R5_SIZE" "$T/plain.img"
TEST_BYTES=$(numfmt --from=iec "$TEST_SIZE")
if [ "$TEST_BYTES" -gt "$R5_SIZE" ]; then
    echo "error: TEST_SIZE $TEST_SIZE exceeds the raid5 array ($R5_SIZE bytes)" >&2; exit 1
fi

# ---------------------------------------------------------------- servers
# nbdkit: file plugin = pread/pwrite through the page cache (cache=default),
# 16 worker threads (default), foreground, dies with this script.
nbdkit --foreground --exit-with-parent --unix "$T/nbdkit.sock" -P "$T/nbdkit.pid" \
    file file="$T/plain.img" cache=default >"$T/nbdkit.out" 2>"$T/nbdkit.err" &
PIDS+=($!); NAMES+=(nbdkit)
wait_pidfile nbdkit "$!" "$T/nbdkit.pid"
URI[nbdkit]="nbd+unix:///?socket=$T/nbdkit.sock"

# qemu-nbd: raw, page cache with flushes honoured (writeback), thread-pool
# AIO, persistent (serves one client after another), no zero detection.
qemu-nbd -f raw -t --socket="$T/qemu-nbd.sock" --pid-file="$T/qemu-nbd.pid" \
    --cache=writeback --aio=threads --detect-zeroes=off --discard=ignore \
    "$T/plain.img" >"$T/qemu-nbd.out" 2>"$T/qemu-nbd.err" &
PIDS+=($!); NAMES+=(qemu-nbd)
wait_pidfile qemu-nbd "$!" "$T/qemu-nbd.pid"
URI[qemu-nbd]="nbd+unix:///?socket=$T/qemu-nbd.sock"

for lvl in raid0 raid5; do
    start_damocles "damocles-$lvl" "$T/$lvl-m"{1..4}
done

# SERVERS / WORKLOADS (space-separated) pick a subset while iterating.
read -r -a SERVERS <<<"${SERVERS:-nbdkit qemu-nbd damocles-raid0 damocles-raid5}"
read -r -a WORKLOADS <<<"${WORKLOADS:-seqread randread seqwrite randwrite}"
declare -A RW=([seqread]=read [seqwrite]=write [randread]=randread [randwrite]=randwrite)
declare -A BS=([seqread]=1M [seqwrite]=1M [randread]=4k [randwrite]=4k)

echo "## damocles $("$DAMOCLES" --version 2>/dev/null | awk '{print $2}'), fio $(fio --version), nbdkit $(nbdkit --version | awk '{print $2}'), qemu-nbd $(qemu-nbd --version | head -1 | awk '{print $2}')"
echo "## $(nproc) cores, tmpdir $T ($fstype); raid5 $R5_SIZE B, raid0 $R0_SIZE B, plain file $R5_SIZE B; test range first $TEST_SIZE"
echo "## $ROUNDS round(s) x ${RUNTIME}s (+${RAMP}s ramp), iodepth $IODEPTH, 1 job"

# Pre-fill the test range through every server (1 MiB sequential writes, then
# an NBD FLUSH, which also commits damocles' journal), then push the dirty
# pages to disk so the runs start from a clean cache.
echo "## pre-filling the first $TEST_SIZE through each server" >&2
for s in "${SERVERS[@]}"; do
    runfio "$T/prefill.$s.json" "$s" --rw=write --bs=1M --end_fsync=1
    [ -f "$T/prefill.$s.json" ] || { echo "error: pre-fill through $s failed" >&2; exit 1; }
done
sync

n=${#SERVERS[@]}
CLK_TCK=$(getconf CLK_TCK)
for r in $(seq 1 "$ROUNDS"); do
    for w in "${WORKLOADS[@]}"; do
        echo "## round $r/$ROUNDS: $w" >&2
        for k in $(seq 0 $((n - 1))); do
            s=${SERVERS[$(((k + r - 1) % n))]}
            pid=$(server_pid "$s")
            c0=$(cpu_ticks "$pid"); t0=$(date +%s%N)
            runfio "$T/res/$w.$s.$r.json" "$s" --rw="${RW[$w]}" --bs="${BS[$w]}" \
                --time_based --runtime="$RUNTIME" --ramp_time="$RAMP"
            # The server's CPU over the whole fio run (ramp included), for µs per I/O.
            echo "$((CLK_TCK)) $c0 $(cpu_ticks "$pid") $t0 $(date +%s%N)" >"$T/res/$w.$s.$r.cpu"
            if [[ $w == *write ]]; then
                # Settle, not measured: a FLUSH (damocles commits what it still buffers,
                # up to its dirty budget) and the page cache written back, so no run pays
                # for the previous server's deferred work.
                runfio "$T/settle.json" "$s" --rw=write --bs=4k --io_size=4k --end_fsync=1
                sync
            fi
        done
    done
done

check_alive

# ---------------------------------------------------------------- report
python3 - "$T/res" "$ROUNDS" "${SERVERS[*]}" "${WORKLOADS[*]}" <<'EOF'
import json, os, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
picked_s, picked_w = sys.argv[3].split(), sys.argv[4].split()
servers = [s for s in ["nbdkit", "qemu-nbd", "damocles-raid0", "damocles-raid5"] if s in picked_s]
workloads = [(w, l) for w, l in [("seqread", "seq read 1M"), ("randread", "rand read 4k"),
             ("seqwrite", "seq write 1M"), ("randwrite", "rand write 4k")] if w in picked_w]

def load(path):
    with open(path) as f:
        txt = f.read()
    j = json.loads(txt[txt.index("{"):])
    job = j["jobs"][0]
    if job.get("error"):
        return None
    side = job["read"] if job["read"]["io_bytes"] else job["write"]
    return side["iops"], side["bw_bytes"] / 1e6, cpu_per_io(path, side["iops"])

def cpu_per_io(json_path, iops):
    """Server CPU µs per I/O: CPU share over the run / IOPS (None if unknown)."""
    try:
        with open(json_path[:-len(".json")] + ".cpu") as f:
            hz, c0, c1, t0, t1 = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    share = (c1 - c0) / hz / ((t1 - t0) / 1e9)
    return share / iops * 1e6 if iops else None

med = {}
print()
print(f"{'workload':<14}{'server':<16}{'IOPS':>10}{'MB/s':>10}{'spread':>9}{'runs':>6}{'CPU us/IO':>11}")
for w, label in workloads:
    for s in servers:
        vals = []
        for r in range(1, rounds + 1):
            p = os.path.join(d, f"{w}.{s}.{r}.json")
            if os.path.exists(p):
                v = load(p)
                if v:
                    vals.append(v)
        if not vals:
            print(f"{label:<14}{s:<16}{'FAILED':>10}")
            continue
        iops = statistics.median(v[0] for v in vals)
        mbs = statistics.median(v[1] for v in vals)
        bw = [v[1] for v in vals]
        spread = f"{(max(bw) - min(bw)) / mbs * 100:.0f}%" if len(vals) > 1 and mbs else "-"
        cpu = [v[2] for v in vals if v[2] is not None]
        cpu = f"{statistics.median(cpu):.1f}" if cpu else "-"
        med[(w, s)] = mbs
        print(f"{label:<14}{s:<16}{iops:>10.0f}{mbs:>10.1f}{spread:>9}{len(vals):>6}{cpu:>11}")
    print()
print("spread = (max - min) / median of MB/s over the runs")
print("CPU us/IO = median of the server's CPU time (user + system, all threads) per I/O;")
print("  steadier than throughput on a busy machine (lower is better)")
print()
print("targets (ratios of median MB/s):")
targets = [
    ("seqread", "damocles-raid0", "nbdkit", 1.0),
    ("seqread", "damocles-raid5", "nbdkit", 1.0),
    ("seqwrite", "damocles-raid5", "nbdkit", 0.8),
    ("randread", "damocles-raid0", "nbdkit", 0.8),
    ("randread", "damocles-raid5", "nbdkit", 0.8),
    ("randwrite", "damocles-raid5", "qemu-nbd", 1.0),
]
label = dict(workloads)
for w, s, ref, goal in targets:
    if w not in label or s not in servers or ref not in servers:
        continue
    a, b = med.get((w, s)), med.get((w, ref))
    if a is None or b is None or b == 0:
        print(f"  {label[w]:<14}{s:<16} / {ref:<9} = n/a    (target >= {goal:.1f}x)  MISS (no data)")
        continue
    ratio = a / b
    verdict = "PASS" if ratio >= goal else "MISS"
    print(f"  {label[w]:<14}{s:<16} / {ref:<9} = {ratio:5.2f}x (target >= {goal:.1f}x)  {verdict}")
EOF

if [ "$FAILS" -gt 0 ]; then
    echo "warning: $FAILS fio run(s) failed; logs in $T" >&2
    KEEP=1
fi
