#!/usr/bin/env bash
# Rebuild under load: a served raid5 of four MEMBER_MIB files (default 1024), filled, and a
# client doing random 4 KiB reads at QD16 over NBD (fio's nbd engine). Each round, on the
# same server:
#   idle   : a member is failed and a spare added; the rebuild runs with no client
#   loaded : again (the member just rebuilt is failed, another spare added), while fio reads
# One fio run per round spans the loaded rebuild: its IOPS log (200 ms samples, Unix-epoch
# times) gives the client's healthy IOPS (the seconds before the failure) and its IOPS
# during the rebuild (between the rebuild-started and -finished events, which an
# --on-event hook stamps). Rebuild rate = bytes the rebuild reports / its duration.
# Targets (issue 15): loaded rebuild ≥ 50 % of the idle rate, client ≥ 50 % of healthy IOPS.
# ROUNDS rounds (default 3), medians.
#
# Usage: bench/rebuild-under-load.sh      Env: MEMBER_MIB ROUNDS HEALTHY DAMOCLES KEEP BENCH_TMPDIR
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
MEMBER_MIB=${MEMBER_MIB:-1024}
ROUNDS=${ROUNDS:-3}
HEALTHY=${HEALTHY:-4}   # seconds of healthy reads before the failure
need_tools fio:fio
build_damocles
make_tmpdir damocles-rebuild-load

for i in 0 1 2 3; do truncate -s "${MEMBER_MIB}M" "$T/m$i"; done
"$DAMOCLES" create --sparse --level raid5 "$T"/m{0..3} >"$T/create.log" 2>&1 \
    || { cat "$T/create.log" >&2; exit 1; }
: >"$T/events"
# The hook stamps each event with the wall clock (one line: kind, time, JSON).
hook="printf '%s %s %s\n' \"\$DAMOCLES_EVENT\" \"\$(date +%s.%N)\" \"\$(tr -d '\n')\" >>'$T/events'"
start_damocles rl --rebuild-rate 0 --control "$T/ctl.sock" --on-event "$hook" "$T"/m{0..3}
CTL=(--array "$T/ctl.sock")
echo "## filling the volume" >&2
fio --name=fill --ioengine=nbd --uri="${URI[rl]}" --rw=write --bs=1M --iodepth=16 \
    --size=100% --end_fsync=1 >"$T/fill.log" 2>&1 || { tail "$T/fill.log" >&2; exit 1; }

spares=0
# rebuild_once VICTIM — adds a new spare, fails VICTIM, waits for the rebuild to finish;
# sets NEWEST to the spare's path.
rebuild_once() {
    local n0 sp
    n0=$(grep -c '^rebuild-finished ' "$T/events" || true)
    spares=$((spares + 1))
    sp="$T/spare$spares"
    truncate -s "${MEMBER_MIB}M" "$sp"
    # The spare first: the failure then hands over to it at once (one rebuild).
    "$DAMOCLES" add "${CTL[@]}" "$sp" >/dev/null
    "$DAMOCLES" fail "${CTL[@]}" "$1" >/dev/null
    for _ in $(seq 6000); do
        [ "$(grep -c '^rebuild-finished ' "$T/events" || true)" -gt "$n0" ] && break
        kill -0 "$(server_pid rl)" 2>/dev/null || { echo "error: server died" >&2; cat "$T/rl.err" >&2; exit 1; }
        sleep 0.1
    done
    NEWEST=$sp
}

victim="$T/m3"
for r in $(seq "$ROUNDS"); do
    sync
    rebuild_once "$victim"; victim=$NEWEST
    sync
    fio --name=load --ioengine=nbd --uri="${URI[rl]}" --rw=randread --bs=4k --iodepth=16 \
        --numjobs=1 --size=100% --norandommap --randrepeat=0 --time_based --runtime=600 \
        --write_iops_log="$T/res/iops.$r" --log_avg_msec=200 --log_unix_epoch=1 \
        --output-format=json --output="$T/res/load.$r.json" >"$T/res/load.$r.log" 2>&1 &
    fpid=$!
    sleep "$HEALTHY"
    echo "fail $(date +%s.%N)" >>"$T/events"
    rebuild_once "$victim"; victim=$NEWEST
    sleep 1
    kill -INT "$fpid"
    wait "$fpid" || true
done
check_alive

python3 - "$T/events" "$T/res" "$ROUNDS" <<'EOF'
import glob, re, statistics, sys
events, res, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
starts, ends, fails = [], [], []
for line in open(events):
    kind, t, rest = (line.rstrip("\n").split(" ", 2) + ["", ""])[:3]
    if kind == "rebuild-started":
        starts.append(float(t))
    elif kind == "rebuild-finished":
        m = re.search(r"(\d+) bytes", rest)
        ends.append((float(t), int(m.group(1)) if m else 0))
        # The rebuild that ended: the last one started.
        starts = starts[: len(ends) - 1] + starts[-1:]
    elif kind == "fail":
        fails.append(float(t))
assert len(starts) == len(ends) == 2 * rounds, (starts, ends)
def rate(i):
    (t1, b), t0 = ends[i], starts[i]
    return b / (t1 - t0) / 1e6
def iops(r, lo, hi):
    s = []
    for f in glob.glob(f"{res}/iops.{r}_iops*.log"):
        for line in open(f):
            ms, v = line.split(",")[:2]
            t = int(ms) / 1000
            # A sample covers the 200 ms before its time stamp.
            if lo <= t - 0.2 and t <= hi:
                s.append(int(v))
    return statistics.mean(s) if s else float("nan")
idle, load, healthy, during = [], [], [], []
for r in range(rounds):
    idle.append(rate(2 * r))
    load.append(rate(2 * r + 1))
    f = fails[r]
    healthy.append(iops(r + 1, f - 3.0, f))
    during.append(iops(r + 1, starts[2 * r + 1], ends[2 * r + 1][0]))
    print(f"round {r + 1}: rebuild idle {idle[-1]:.0f} MB/s, under load {load[-1]:.0f} MB/s; "
          f"client healthy {healthy[-1]:.0f} IOPS, during rebuild {during[-1]:.0f} IOPS")
i, l = statistics.median(idle), statistics.median(load)
h, d = statistics.median(healthy), statistics.median(during)
print(f"median: rebuild idle {i:.0f} MB/s, under load {l:.0f} MB/s ({l / i:.2f}x); "
      f"client healthy {h:.0f} IOPS, during rebuild {d:.0f} IOPS ({d / h:.2f}x)")
print(f"rebuild under load / idle = {l / i:.2f} (target >= 0.5): {'PASS' if l / i >= 0.5 else 'MISS'}")
print(f"client during / healthy = {d / h:.2f} (target >= 0.5): {'PASS' if d / h >= 0.5 else 'MISS'}")
EOF
