#!/usr/bin/env bash
# What the write journal costs: two raid5 arrays over 4 page-cached file
# members each, one created normally (journal on) and one with --no-journal,
# both served by `damocles serve` on a Unix socket and driven in ONE run by
# fio's nbd engine (libnbd, one connection, QD16, one job) on the first
# TEST_SIZE bytes (pre-filled through each server first).
#
# Workloads: seq 1 MiB writes, random 4 KiB writes. Two modes:
#   (a) plain  : no client flushes. The journaled array may keep up to its
#                dirty budget (a tenth of RAM, max 1 GiB) in memory and
#                commits only on budget / its 5 s timer; the no-journal array
#                leaves the same bytes as dirty page cache. Neither is durable
#                at the end of the run. This is what the issue's target means.
#   (b) fsync  : fio sends an NBD FLUSH every FSYNC_EVERY (32) writes and one
#                at the end (--end_fsync=1, counted in the run's time), so the
#                journal's work (journal write, fsync, in-place write) is paid
#                inside the measurement. The honest durability cost.
# Every run gets a fresh server process; after it, the server gets an NBD
# FLUSH (a 4 KiB write + end_fsync, not measured), is stopped (SIGTERM: flush,
# exit 0) and the page cache is synced, so no run inherits the previous run's
# commit or writeback.
# Each (mode, workload, server) runs ROUNDS times, interleaved (servers back
# to back, order alternating each round); the table shows medians, the mean
# NBD FLUSH latency fio saw (mode b) and the server's peak RSS (VmHWM).
#
# Usage: bench/journal-cost.sh            (~5-6 min)
#        QUICK=1 bench/journal-cost.sh    (~1.5 min: 1 round, 3 s runs)
# Env:   ROUNDS RUNTIME RAMP IODEPTH MEMBER_SIZE TEST_SIZE FSYNC_EVERY
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
FSYNC_EVERY=${FSYNC_EVERY:-32}

. bench/lib.sh
need_tools fio:fio
build_damocles
make_tmpdir damocles-journal-bench

# ---------------------------------------------------------------- arrays
declare -A CREATE_FLAGS=([journal]="" [nojournal]="--no-journal")
TEST_BYTES=$(numfmt --from=iec "$TEST_SIZE")
declare -A SIZE
for a in journal nojournal; do
    for i in 1 2 3 4; do truncate -s "$MEMBER_SIZE" "$T/$a-m$i"; done
    # shellcheck disable=SC2086
    "$DAMOCLES" create --level raid5 ${CREATE_FLAGS[$a]} "$T/$a-m"{1..4} >"$T/$a.create" 2>&1 \
        || { cat "$T/$a.create" >&2; exit 1; }
    SIZE[$a]=$(array_size "$T/$a-m"{1..4})
    if [ "$TEST_BYTES" -gt "${SIZE[$a]}" ]; then
        echo "error: TEST_SIZE $TEST_SIZE exceeds the $a raid5 array (${SIZE[$a]} bytes)" >&2; exit 1
    fi
    "$DAMOCLES" status "$T/$a-m"{1..4} >"$T/$a.status"
done

SERVERS=(damocles-journal damocles-nojournal)
# Every run gets a fresh server process (so its peak RSS is that run's and no
# run inherits another's dirty state); a stop is SIGTERM = flush + exit 0.
start() { start_damocles "$1" "$T/${1#damocles-}-m"{1..4}; }

WORKLOADS=(seqwrite randwrite)
declare -A RW=([seqwrite]=write [randwrite]=randwrite)
declare -A BS=([seqwrite]=1M [randwrite]=4k)
MODES=(plain fsync)
declare -A MODE_ARGS=([plain]="" [fsync]="--fsync=$FSYNC_EVERY --end_fsync=1")

# finish SERVER OUT — NBD FLUSH through SERVER (commits the journal; a 4 KiB
# write + end_fsync, not measured), its peak RSS (VmHWM, kB) into OUT, stop
# it, sync the members' page cache.
finish() {
    runfio "$T/settle.json" "$1" --rw=write --bs=4k --io_size=4k --end_fsync=1
    awk '/^VmHWM:/ {print $2}' "/proc/$(server_pid "$1")/status" >"$2" 2>/dev/null || echo 0 >"$2"
    stop_named "$1"
    sync
}

echo "## damocles $("$DAMOCLES" --version 2>/dev/null | awk '{print $2}'), fio $(fio --version)"
echo "## $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, tmpdir $T ($fstype); raid5 over 4 x $MEMBER_SIZE: journal ${SIZE[journal]} B, no-journal ${SIZE[nojournal]} B; test range first $TEST_SIZE"
echo "## $ROUNDS round(s) x ${RUNTIME}s (+${RAMP}s ramp), iodepth $IODEPTH, 1 job; mode fsync = --fsync=$FSYNC_EVERY --end_fsync=1"

echo "## pre-filling the first $TEST_SIZE through each server" >&2
for s in "${SERVERS[@]}"; do
    start "$s"
    runfio "$T/prefill.$s.json" "$s" --rw=write --bs=1M --end_fsync=1
    [ -f "$T/prefill.$s.json" ] || { echo "error: pre-fill through $s failed" >&2; exit 1; }
    finish "$s" "$T/res/rss.prefill.$s"
done

n=${#SERVERS[@]}
for m in "${MODES[@]}"; do
    for r in $(seq 1 "$ROUNDS"); do
        for w in "${WORKLOADS[@]}"; do
            echo "## mode $m, round $r/$ROUNDS: $w" >&2
            for k in $(seq 0 $((n - 1))); do
                s=${SERVERS[$(((k + r - 1) % n))]}
                start "$s"
                # shellcheck disable=SC2086
                runfio "$T/res/$m.$w.$s.$r.json" "$s" --rw="${RW[$w]}" --bs="${BS[$w]}" \
                    --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" ${MODE_ARGS[$m]}
                finish "$s" "$T/res/rss.$m.$w.$s.$r"
            done
        done
    done
done

grep -h -i -E 'warn|error|panic' "$T"/damocles-*.err >&2 || true

# ---------------------------------------------------------------- report
python3 - "$T/res" "$ROUNDS" "$FSYNC_EVERY" <<'EOF'
import glob, json, os, statistics, sys
d, rounds, every = sys.argv[1], int(sys.argv[2]), sys.argv[3]
servers = ["damocles-journal", "damocles-nojournal"]
workloads = [("seqwrite", "seq write 1M"), ("randwrite", "rand write 4k")]
modes = [("plain", "(a) plain"), ("fsync", f"(b) fsync={every}")]

def load(path):
    with open(path) as f:
        txt = f.read()
    j = json.loads(txt[txt.index("{"):])
    job = j["jobs"][0]
    if job.get("error"):
        return None
    s = job.get("sync", {})
    fl = s["lat_ns"]["mean"] / 1e6 if s.get("total_ios") else None
    return job["write"]["iops"], job["write"]["bw_bytes"] / 1e6, fl

def rss(pattern):
    vals = []
    for p in glob.glob(os.path.join(d, pattern)):
        with open(p) as f:
            v = f.read().split()[-1]
        if v.isdigit() and int(v):
            vals.append(int(v))
    return f"{max(vals) / 1024:.0f}" if vals else "-"

med = {}
print()
print(f"{'mode':<14}{'workload':<15}{'server':<20}{'IOPS':>9}{'MB/s':>9}{'spread':>8}{'runs':>5}{'flush ms':>9}{'RSS MiB':>9}")
for m, mlabel in modes:
    for w, wlabel in workloads:
        for s in servers:
            vals = []
            for r in range(1, rounds + 1):
                p = os.path.join(d, f"{m}.{w}.{s}.{r}.json")
                if os.path.exists(p):
                    v = load(p)
                    if v:
                        vals.append(v)
            peak = rss(f"rss.{m}.{w}.{s}.*")
            if not vals:
                print(f"{mlabel:<14}{wlabel:<15}{s:<20}{'FAILED':>9}{'':>31}{peak:>9}")
                continue
            iops = statistics.median(v[0] for v in vals)
            mbs = statistics.median(v[1] for v in vals)
            bw = [v[1] for v in vals]
            spread = f"{(max(bw) - min(bw)) / mbs * 100:.0f}%" if len(vals) > 1 and mbs else "-"
            fls = [v[2] for v in vals if v[2] is not None]
            fl = f"{statistics.median(fls):.1f}" if fls else "-"
            med[(m, w, s)] = mbs
            print(f"{mlabel:<14}{wlabel:<15}{s:<20}{iops:>9.0f}{mbs:>9.1f}{spread:>8}{len(vals):>5}{fl:>9}{peak:>9}")
    print()
print("spread = (max - min) / median of MB/s; flush ms = median of fio's mean NBD FLUSH latency;")
print("RSS = highest peak RSS (VmHWM) of the server over those runs, incl. the post-run flush")
print("pre-fill peak RSS: " + ", ".join(f"{s} {rss(f'rss.prefill.{s}')} MiB" for s in servers))
print()
print("journal cost (median MB/s, journal / no-journal; target >= 0.7x):")
for m, mlabel in modes:
    for w, wlabel in workloads:
        a, b = med.get((m, w, "damocles-journal")), med.get((m, w, "damocles-nojournal"))
        tag = "  <- the issue's target" if m == "plain" else ""
        if a is None or b is None or b == 0:
            print(f"  {mlabel:<14}{wlabel:<15} = n/a    MISS (no data){tag}")
            continue
        ratio = a / b
        verdict = "PASS" if ratio >= 0.7 else "MISS"
        print(f"  {mlabel:<14}{wlabel:<15}{a:8.1f} / {b:8.1f} MB/s = {ratio:5.2f}x  {verdict}{tag}")
EOF

if [ "$FAILS" -gt 0 ]; then
    echo "warning: $FAILS fio run(s) failed; logs in $T" >&2
    KEEP=1
fi
