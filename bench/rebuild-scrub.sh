#!/usr/bin/env bash
# Rebuild and scrub speed against a plain copy, same run (issue 15: rebuild of one member
# ≤ 1.0× the time of `cp` + `sync` of one member file; scrub ≥ 1.5 GB/s). The rebuild's CPU
# time (user + system, whole process) is printed too: on a shared machine it varies less
# than the wall clock. For the rebuild under client load see bench/rebuild-under-load.sh.
#
# A raid5 over four page-cached sparse files of MEMBER_MIB (default 1024) in a tmpdir under
# /var/tmp (BENCH_TMPDIR to move it), filled with data and committed, then — after `sync` —
# timed: a full scrub (no rate limit), and the rebuild of one failed member onto a spare
# (no rate limit, ending with the data durable). Next to it: `cp` of one member file
# followed by `sync` of the copy. ROUNDS rounds (default 3), medians reported.
set -euo pipefail
cd "$(dirname "$0")/.."
MEMBER_MIB=${MEMBER_MIB:-1024}
ROUNDS=${ROUNDS:-3}
BASE=${BENCH_TMPDIR:-/var/tmp}
echo "## cargo build --release -p damocles-engine --example rebuild_scrub" >&2
cargo build --release -q -p damocles-engine --example rebuild_scrub >&2
BIN="${CARGO_TARGET_DIR:-target}/release/examples/rebuild_scrub"
T=$(mktemp -d "$BASE/damocles-rsbench.XXXXXX")
trap 'rm -rf "$T"' EXIT

scrubs=() rebuilds=() cps=() cpus=()
for r in $(seq "$ROUNDS"); do
    rm -rf "${T:?}"/*
    out=$("$BIN" "$T" "$MEMBER_MIB")
    echo "$out" | grep -v RESULT
    s=$(echo "$out" | sed -n 's/.*scrub_gbs=\([0-9.]*\).*/\1/p')
    b=$(echo "$out" | sed -n 's/.*rebuild_s=\([0-9.]*\).*/\1/p')
    u=$(echo "$out" | sed -n 's/.*rebuild_cpu_s=\([0-9.]*\).*/\1/p')
    sync
    t0=$(date +%s.%N)
    cp "$T/m0" "$T/copy"
    sync "$T/copy"
    t1=$(date +%s.%N)
    c=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
    echo "round $r: scrub ${s} GB/s, rebuild ${b} s (CPU ${u} s), cp+sync ${c} s"
    scrubs+=("$s") rebuilds+=("$b") cps+=("$c") cpus+=("$u")
done
python3 - "${scrubs[*]}" "${rebuilds[*]}" "${cps[*]}" "$MEMBER_MIB" "${cpus[*]}" <<'PY'
import statistics, sys
sc = [float(x) for x in sys.argv[1].split()]
rb = [float(x) for x in sys.argv[2].split()]
cp = [float(x) for x in sys.argv[3].split()]
mib = int(sys.argv[4])
cpu = statistics.median(float(x) for x in sys.argv[5].split())
s, r, c = statistics.median(sc), statistics.median(rb), statistics.median(cp)
cp_gbs = mib * 2**20 / c / 1e9
print(f"median: scrub {s:.2f} GB/s (cp {cp_gbs:.2f} GB/s), rebuild {r:.2f} s "
      f"(CPU {cpu:.2f} s), cp {c:.2f} s")
print(f"rebuild / cp = {r / c:.2f}x (target <= 1.0): {'PASS' if r / c <= 1.0 else 'MISS'}")
print(f"scrub = {s:.2f} GB/s (target >= 1.5): {'PASS' if s >= 1.5 else 'MISS'}")
PY
