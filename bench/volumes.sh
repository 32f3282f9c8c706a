#!/usr/bin/env bash
# What volumes cost: I/O to one volume of a multi-volume array against a
# single-volume array of the same level on the same kind of members (the
# issue's target: within 5 %).
#
#   single : raid5 over 4 x MEMBER_SIZE page-cached files, `create` as before:
#            one volume ("vms") of the whole size.
#   multi  : the same members, `create --no-volume`, then volume "vms" raid5 of
#            VMS_SIZE and volume "media" raid0 of the rest (pre-filled too, so
#            the chunk map holds both and the members are shared).
# Both served by `damocles serve` on a Unix socket; fio's nbd engine (libnbd,
# one connection, QD16, one job) drives export "vms" on the first TEST_SIZE
# bytes, pre-filled first.
#
# Workloads (each a fresh server process, servers interleaved, order
# alternating each round; medians of ROUNDS):
#   seqwrite : TEST_SIZE written in 1 MiB writes AND flushed (--end_fsync=1),
#              wall clock — a fixed amount, not a time-based run that fits in
#              the write buffer;
#   randread : 4 KiB random reads, RUNTIME seconds;
#   seqread  : 1 MiB sequential reads, RUNTIME seconds.
#
# Usage: bench/volumes.sh            (~4 min)
#        QUICK=1 bench/volumes.sh    (~1.5 min: 1 round, 3 s runs)
# Env:   ROUNDS RUNTIME RAMP IODEPTH MEMBER_SIZE VMS_SIZE TEST_SIZE
#        BENCH_TMPDIR (parent of the tmpdir, default /var/tmp)
#        DAMOCLES=/path/to/binary (skip the cargo build) KEEP=1 (keep tmpdir)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${QUICK:-0}" = 1 ]; then
    ROUNDS=${ROUNDS:-1}; RUNTIME=${RUNTIME:-3}; RAMP=${RAMP:-1}
else
    ROUNDS=${ROUNDS:-3}; RUNTIME=${RUNTIME:-6}; RAMP=${RAMP:-1}
fi
IODEPTH=${IODEPTH:-16}
MEMBER_SIZE=${MEMBER_SIZE:-512M}
VMS_SIZE=${VMS_SIZE:-1G}
TEST_SIZE=${TEST_SIZE:-768M}

. bench/lib.sh
need_tools fio:fio
build_damocles
make_tmpdir damocles-volumes-bench

for a in single multi; do
    for i in 1 2 3 4; do truncate -s "$MEMBER_SIZE" "$T/$a-m$i"; done
done
"$DAMOCLES" create --level raid5 --name vms "$T/single-m"{1..4} >"$T/single.create" 2>&1 \
    || { cat "$T/single.create" >&2; exit 1; }
"$DAMOCLES" create --level raid5 --name tank --no-volume "$T/multi-m"{1..4} >"$T/multi.create" 2>&1 \
    || { cat "$T/multi.create" >&2; exit 1; }
"$DAMOCLES" volume create vms --level raid5 --size "$VMS_SIZE" -- "$T/multi-m"{1..4} >>"$T/multi.create"
"$DAMOCLES" volume create media --level raid0 --size max -- "$T/multi-m"{1..4} >>"$T/multi.create"

SERVERS=(damocles-single damocles-multi)
start() {
    start_damocles "$1" "$T/${1#damocles-}-m"{1..4}
    # The export under test is "vms" on either server.
    URI[$1]="nbd+unix:///vms?socket=$T/$1.sock"
}

# finish SERVER — stop it (SIGTERM: flush, exit 0) and sync the page cache.
finish() { stop_named "$1"; sync; }

echo "## damocles $("$DAMOCLES" --version 2>/dev/null | awk '{print $2}'), fio $(fio --version)"
echo "## $(nproc) cores, tmpdir $T ($fstype); raid5 over 4 x $MEMBER_SIZE; multi: vms $VMS_SIZE raid5 + media raid0 (rest); test range first $TEST_SIZE of vms"
echo "## $ROUNDS round(s); seqwrite = $TEST_SIZE written + flushed (wall clock); reads ${RUNTIME}s (+${RAMP}s ramp); iodepth $IODEPTH, 1 job"

echo "## pre-filling vms (and media on multi) through each server" >&2
for s in "${SERVERS[@]}"; do
    start "$s"
    runfio "$T/prefill.$s.json" "$s" --rw=write --bs=1M --end_fsync=1
    [ -f "$T/prefill.$s.json" ] || { echo "error: pre-fill through $s failed" >&2; exit 1; }
    if [ "$s" = damocles-multi ]; then
        URI[$s]="nbd+unix:///media?socket=$T/$s.sock"
        runfio "$T/prefill.media.json" "$s" --rw=write --bs=1M --end_fsync=1
        URI[$s]="nbd+unix:///vms?socket=$T/$s.sock"
    fi
    finish "$s"
done

WORKLOADS=(seqwrite randread seqread)
declare -A ARGS=(
    [seqwrite]="--rw=write --bs=1M --io_size=$TEST_SIZE --end_fsync=1"
    [randread]="--rw=randread --bs=4k --time_based --runtime=$RUNTIME --ramp_time=$RAMP"
    [seqread]="--rw=read --bs=1M --time_based --runtime=$RUNTIME --ramp_time=$RAMP"
)
n=${#SERVERS[@]}
for r in $(seq 1 "$ROUNDS"); do
    for w in "${WORKLOADS[@]}"; do
        echo "## round $r/$ROUNDS: $w" >&2
        for k in $(seq 0 $((n - 1))); do
            s=${SERVERS[$(((k + r - 1) % n))]}
            start "$s"
            t0=$(date +%s%N)
            # shellcheck disable=SC2086
            runfio "$T/res/$w.$s.$r.json" "$s" ${ARGS[$w]}
            echo $(( ($(date +%s%N) - t0) / 1000000 )) >"$T/res/$w.$s.$r.ms"
            finish "$s"
        done
    done
done
check_alive
grep -h -i -E 'warn|error|panic' "$T"/damocles-*.err >&2 || true

python3 - "$T/res" "$ROUNDS" "$TEST_SIZE" <<'EOF'
import json, os, statistics, sys
d, rounds, size = sys.argv[1], int(sys.argv[2]), sys.argv[3]
servers = ["damocles-single", "damocles-multi"]
rows = [("seqwrite", f"seq write 1M, {size} + flush (wall clock)"),
        ("randread", "rand read 4k"), ("seqread", "seq read 1M")]

def value(w, s, r):
    p = os.path.join(d, f"{w}.{s}.{r}.json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        txt = f.read()
    job = json.loads(txt[txt.index("{"):])["jobs"][0]
    if job.get("error"):
        return None
    if w == "seqwrite":
        # Bytes written over the wall clock of the whole run, flush included.
        with open(os.path.join(d, f"{w}.{s}.{r}.ms")) as f:
            ms = int(f.read())
        return job["write"]["io_bytes"] / (ms / 1000) / 1e6
    side = "read"
    return job[side]["iops"] if w == "randread" else job[side]["bw_bytes"] / 1e6

print()
print(f"{'workload':<44}{'single':>10}{'multi':>10}{'multi/single':>14}")
for w, label in rows:
    med = {}
    for s in servers:
        vals = [v for r in range(1, rounds + 1) if (v := value(w, s, r)) is not None]
        med[s] = statistics.median(vals) if vals else None
    a, b = med["damocles-single"], med["damocles-multi"]
    unit = "IOPS" if w == "randread" else "MB/s"
    if a and b:
        ratio = b / a
        verdict = "PASS" if ratio >= 0.95 else "MISS"
        print(f"{label:<44}{a:>10.1f}{b:>10.1f}{ratio:>10.2f}x {verdict}  ({unit}, median of {rounds})")
    else:
        print(f"{label:<44}{'n/a':>10}{'n/a':>10}{'':>14}")
print()
print("target: one volume of a multi-volume array within 5 % of a single-volume array (>= 0.95x)")
EOF

if [ "$FAILS" -gt 0 ]; then
    echo "warning: $FAILS fio run(s) failed; logs in $T" >&2
    KEEP=1
fi
