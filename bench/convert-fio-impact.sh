#!/usr/bin/env bash
# Foreground reads during a level conversion, same run (issue #6: foreground fio random
# reads during conversion keep >= 50% of their idle IOPS at the default rate limit).
#
# Each round, in a tmpdir under $TMPDIR (default /tmp; BENCH_TMPDIR to move it), on
# page-cached sparse files: a raid0 over two members is served by `damocles serve
# --socket` (with a control socket of its own, so other servers on the machine do not
# matter) and filled through NBD with DATA_MIB of fio's data (1 MiB writes, then a
# FLUSH). DATA_MIB defaults to 4096: about 1000 chunks of 4 MiB, as many as arrays of up
# to a TiB have, and a conversion that lasts over 10 s even at the full default rate.
# fio random 4 KiB reads (nbd engine, one connection, --iodepth=16, one job, --thread) on
# those DATA_MIB then run RUNTIME s (default 10) three times:
#   idle   - nothing else running (raid0 over the two members);
#   during - two members were just added through the server (`add --grow`, which starts a
#            balance) and `damocles convert --level raid5 --background` made raid5 the goal
#            of that reshape, at the server's DEFAULT rate limit (no --rate). The
#            conversion must still be running when fio ends, so it overlaps the whole fio
#            run; a round where it ended first is flagged and left out of the median
#            (raise DATA_MIB);
#   after  - once the conversion has finished (raid5 over four; for reference only).
# The conversion's time comes from the server's events (`serve --on-event`), its progress
# from `damocles status --json`. ROUNDS rounds (default 3); the table gives each round's
# IOPS and during/idle ratio, then the median ratio against the target (>= 0.50).
# Knobs: DATA_MIB RUNTIME ROUNDS BENCH_TMPDIR DAMOCLES (skip the build) KEEP=1 (keep tmpdir).
# Needs 4 x (DATA_MIB / 2 + DATA_MIB / 16 + 64) MiB of disk (about 9.3 GiB by default).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_MIB=${DATA_MIB:-4096}
RUNTIME=${RUNTIME:-10}
ROUNDS=${ROUNDS:-3}
RAMP=0
IODEPTH=16
TEST_SIZE="${DATA_MIB}M"
BENCH_TMPDIR=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}

. bench/lib.sh
need_tools fio:fio
build_damocles
make_tmpdir damocles-convfio
CTL="$T/ctl.sock"
# Members: half the data each, plus room for metadata, journal and checksums.
MEMBER=$(( (DATA_MIB / 2 + DATA_MIB / 16 + 64) << 20 ))

# iops JSON — read IOPS from a fio JSON file (fio may print a line before the JSON).
iops() {
    python3 -c 'import json,sys; t=open(sys.argv[1]).read(); print(json.loads(t[t.index("{"):])["jobs"][0]["read"]["iops"])' "$1"
}
# reshape_state — "running done total rate_limit" of the reshape job, from the server.
reshape_state() {
    "$DAMOCLES" status --json --array "$CTL" | python3 -c '
import json, sys
r = json.load(sys.stdin).get("reshape") or {}
print(int(bool(r.get("running"))), r.get("done", 0), r.get("total", 0), r.get("rate_limit", 0))'
}
randread() {
    runfio "$1" damocles --rw=randread --bs=4k --thread --time_based --runtime="$RUNTIME"
}

echo "## damocles $("$DAMOCLES" --version 2>/dev/null | awk '{print $2}'), $(fio --version)"
echo "## $(nproc) cores, tmpdir $T ($fstype); raid0 over 2 x $((MEMBER >> 20)) MiB files + 2 added; $DATA_MIB MiB of data"
echo "## fio randread 4k, iodepth $IODEPTH, 1 job, --thread, ${RUNTIME}s on the first $DATA_MIB MiB; $ROUNDS round(s)"
printf '%-6s %9s %9s %6s %9s %12s %6s %10s\n' round idle during ratio after "conv in fio" MiB/s "convert s"
res=()
for r in $(seq "$ROUNDS"); do
    stop_named damocles
    rm -f "$T"/m* "$T"/events "$T"/*.json
    for i in 0 1 2 3; do truncate -s "$MEMBER" "$T/m$i"; done
    "$DAMOCLES" create --level raid0 "$T/m0" "$T/m1" > "$T/create.out"
    start_damocles damocles --control "$CTL" \
        --on-event "{ printf '%s ' \"\$(date +%s.%N)\"; tr -d '\\n'; echo; } >> '$T/events'" "$T/m0" "$T/m1"
    runfio "$T/fill.json" damocles --rw=write --bs=1M --thread --end_fsync=1
    [ -f "$T/fill.json" ] || { echo "error: filling the array failed" >&2; exit 1; }
    sync

    randread "$T/idle.json"
    # The first `add --grow` starts a balance at once; the conversion takes it over as its
    # goal at its next chunk move (one reshape job, from the first add to the end).
    for i in 2 3; do "$DAMOCLES" add --grow --array "$CTL" "$T/m$i" > "$T/add$i.out"; done
    "$DAMOCLES" convert --level raid5 --background --array "$CTL" > "$T/convert.out"
    read -r _ p0 _ limit < <(reshape_state)
    t0=$(date +%s.%N)
    randread "$T/during.json"
    read -r run p1 total _ < <(reshape_state)
    t1=$(date +%s.%N)
    if [ "$run" = 1 ]; then
        at="$((p0 * 100 / total))-$((p1 * 100 / total))%"
    else
        at="ended first"
    fi
    speed=$(python3 -c "print(f'{($p1 - $p0) / ($t1 - $t0) / 2**20:.0f}')")
    for _ in $(seq 3000); do
        grep -q '"reshape finished' "$T/events" 2>/dev/null && break
        sleep 0.2
    done
    grep -q '"reshape finished' "$T/events" || { echo "error: the conversion did not finish in 10 min" >&2; exit 1; }
    randread "$T/after.json"
    # Lines of the events file: time, then the event's JSON.
    conv=$(python3 -c '
import json, sys
t = {}
for line in open(sys.argv[1]):
    at, ev = line.split(" ", 1)
    t.setdefault(json.loads(ev)["event"], float(at))
print("%.1f" % (t["reshape-finished"] - t["member-added"]))' "$T/events")
    for f in idle during after; do [ -f "$T/$f.json" ] || { echo "error: fio ($f) failed" >&2; exit 1; }; done
    i0=$(iops "$T/idle.json") i1=$(iops "$T/during.json") i2=$(iops "$T/after.json")
    ratio=$(python3 -c "print(f'{$i1 / $i0:.2f}')")
    printf '%-6s %9.0f %9.0f %6s %9.0f %12s %6s %10s\n' "$r" "$i0" "$i1" "$ratio" "$i2" "$at" "$speed" "$conv"
    [ "$run" = 1 ] && res+=("$ratio")
done
stop_named damocles
grep -h -i -E 'warn|error|panic' "$T"/damocles.err >&2 || true

echo
echo "idle/during/after = fio read IOPS; ratio = during / idle; conv in fio = the conversion's"
echo "progress when the 'during' run started and ended; MiB/s = its progress meanwhile (member"
echo "bytes written, as its rate limit counts them; limit $((limit >> 20)) MiB/s, the server's"
echo "default); convert s = the whole reshape, from the first add --grow to its end"
if [ "${#res[@]}" -lt "$ROUNDS" ]; then
    echo "warning: in $((ROUNDS - ${#res[@]})) round(s) the conversion ended before fio did;" \
        "those are left out (raise DATA_MIB so it overlaps the whole ${RUNTIME} s)"
fi
[ "${#res[@]}" -gt 0 ] || { echo "no round overlapped the conversion entirely: no result"; exit 1; }
python3 - "${res[*]}" <<'PY'
import statistics, sys
m = statistics.median(float(x) for x in sys.argv[1].split())
print(f"median during/idle = {m:.2f} (target >= 0.50): {'PASS' if m >= 0.5 else 'MISS'}")
PY
