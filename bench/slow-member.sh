#!/usr/bin/env bash
# A slow disk in a raid5 of 4: random 4 KiB reads (fio nbd engine, QD16) while one
# member answers every read 50 ms late (nbdkit --filter=delay rdelay=50ms under
# nbdfuse), in ONE run, three arrays on the same kind of members:
#
#   healthy  : the fourth member on nbdfuse without a delay       (--slow-limit 20ms)
#   hedged   : the fourth member delayed, damocles' slow limit 20 ms: reads it holds
#              up are answered from the other three (parity)
#   waiting  : the fourth member delayed, slow limit = fail limit (60 s): every read
#              of that member waits for it, as md (no hedging) does
#
# Each runs ROUNDS times, interleaved; the table shows the median IOPS and p99
# completion latency, and the issue's targets as ratio lines (hedged p99 <= 2x the
# slow limit; hedged IOPS >= 0.5x healthy).
#
# Usage: bench/slow-member.sh    (~2 min)     Env: ROUNDS RUNTIME DAMOCLES KEEP
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}; RUNTIME=${RUNTIME:-8}; RAMP=${RAMP:-1}
IODEPTH=16; TEST_SIZE=${TEST_SIZE:-256M}; MEMBER=${MEMBER:-160M}
. bench/lib.sh
need_tools fio:fio nbdkit:nbdkit nbdfuse:nbdfuse fusermount3:fuse3
build_damocles
make_tmpdir damocles-slow-member
MOUNTS=()
cleanup_mounts() {
    for m in "${MOUNTS[@]}"; do fusermount3 -uz "$m" 2>/dev/null || true; done
    bench_cleanup
}
trap cleanup_mounts EXIT

# fuse_member NAME DELAY BACKING — nbdkit (file, delay filter) + nbdfuse; sets FUSED to the file
# path. Not called in \$(...): its servers would hold the pipe open and PIDS would be lost.
fuse_member() {
    local n=$1 d=$2 b=$T/$3.backing
    [ -e "$b" ] || truncate -s "$MEMBER" "$b"
    nbdkit --foreground --exit-with-parent --unix "$T/$n.nbdkit" --filter=delay \
        file "$b" rdelay="$d" >/dev/null 2>"$T/$n.nbdkit.err" &
    PIDS+=("$!"); NAMES+=("nbdkit-$n")
    for _ in $(seq 100); do [ -S "$T/$n.nbdkit" ] && break; sleep 0.1; done
    mkdir -p "$T/$n.fuse"
    nbdfuse "$T/$n.fuse" "nbd+unix:///?socket=$T/$n.nbdkit" >/dev/null 2>"$T/$n.fuse.err" &
    PIDS+=("$!"); NAMES+=("nbdfuse-$n")
    MOUNTS+=("$T/$n.fuse")
    for _ in $(seq 100); do [ -e "$T/$n.fuse/nbd" ] && break; sleep 0.1; done
    FUSED="$T/$n.fuse/nbd"
}

for a in healthy hedged waiting; do
    for i in 1 2 3; do truncate -s "$MEMBER" "$T/$a-m$i"; done
    delay=0ms; [ "$a" = healthy ] || delay=50ms
    # Written undelayed, then served through the delay: the data must be real.
    fuse_member "$a" 0ms "$a"; f=$FUSED
    "$DAMOCLES" create --sparse --level raid5 "$T/$a-m"{1..3} "$f" >"$T/$a.create" 2>&1 \
        || { cat "$T/$a.create" >&2; exit 1; }
    start_damocles "$a-fill" "$T/$a-m"{1..3} "$f"
    fio --name=fill --ioengine=nbd --uri="${URI[$a-fill]}" --rw=write --bs=1M \
        --iodepth=16 --size="$TEST_SIZE" --end_fsync=1 >"$T/$a.fill.log" 2>&1
    stop_named "$a-fill"
    fusermount3 -u "$T/$a.fuse"
    stop_named "nbdfuse-$a"; stop_named "nbdkit-$a"
    fuse_member "$a-d" "$delay" "$a"; f=$FUSED
    case $a in
        waiting) lim=(--slow-limit 60s --fail-limit 60s) ;;
        *) lim=(--slow-limit 20ms --fail-limit 60s) ;;
    esac
    start_damocles "$a" "${lim[@]}" "$T/$a-m"{1..3} "$f"
done

for r in $(seq "$ROUNDS"); do
    for a in healthy hedged waiting; do
        runfio "$T/res/$a.$r.json" "$a" --rw=randread --bs=4k --time_based \
            --runtime="$RUNTIME" --ramp_time="$RAMP"
    done
done
check_alive

python3 - "$T/res" "$ROUNDS" <<'EOF'
import json, os, statistics, sys
res, rounds = sys.argv[1], int(sys.argv[2])
row = {}
for a in ("healthy", "hedged", "waiting"):
    iops, p99 = [], []
    for r in range(1, rounds + 1):
        p = os.path.join(res, f"{a}.{r}.json")
        if not os.path.exists(p):
            continue
        j = json.load(open(p))["jobs"][0]["read"]
        iops.append(j["iops"])
        p99.append(j["clat_ns"]["percentile"]["99.000000"] / 1e6)
    row[a] = (statistics.median(iops), statistics.median(p99)) if iops else (0, 0)
print(f"| array (random 4 KiB read, QD16; median of {rounds}) | IOPS | p99 ms |")
print("|---|---:|---:|")
for a, (i, p) in row.items():
    print(f"| {a} | {i:.0f} | {p:.1f} |")
h, hd = row["healthy"], row["hedged"]
ok = lambda c: "PASS" if c else "MISS"
print(f"hedged p99 {hd[1]:.1f} ms vs 2x slow limit 40 ms: {ok(hd[1] <= 40)}")
print(f"hedged IOPS / healthy = {hd[0] / max(h[0], 1):.2f} (target >= 0.5): {ok(hd[0] >= 0.5 * h[0])}")
print(f"waiting IOPS / healthy = {row['waiting'][0] / max(h[0], 1):.2f} (no hedging, for comparison)")
EOF
