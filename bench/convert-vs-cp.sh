#!/usr/bin/env bash
# Level conversion speed against a plain copy, same run (issue #6: raid0 over 2 members →
# raid5 over 4 members of N GiB takes ≤ 3× the time of `cp` of N GiB).
#
# In a tmpdir under /var/tmp (BENCH_TMPDIR to move it), page-cached sparse files: a raid0
# over two members is filled with DATA_MIB (default 1024) of random data, two members are
# added (`add --grow`), and after `sync` the offline `damocles convert --level raid5
# --rate 0` is timed (it ends with everything durable). Next to it: `cp` of the same data
# file and `sync` of the copy. ROUNDS rounds (default 3), medians reported.
# DAMOCLES=/path/to/binary skips the build (to compare two builds).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_MIB=${DATA_MIB:-1024}
ROUNDS=${ROUNDS:-3}
BASE=${BENCH_TMPDIR:-/var/tmp}
if [ -n "${DAMOCLES:-}" ]; then
    BIN=$(realpath "$DAMOCLES")
else
    echo "## cargo build --release -p damocles" >&2
    cargo build --release -q -p damocles >&2
    TD=${CARGO_TARGET_DIR:-target}
    case $TD in /*) ;; *) TD="$(pwd)/$TD" ;; esac
    BIN="$TD/release/damocles"
fi
T=$(mktemp -d "$BASE/damocles-convbench.XXXXXX")
trap 'rm -rf "$T"' EXIT
head -c "$((DATA_MIB << 20))" /dev/urandom > "$T/data"
# Members: half the data each, plus room for metadata, journal and checksums.
MEMBER=$(( (DATA_MIB / 2 + DATA_MIB / 16 + 64) << 20 ))

convs=() cps=()
for r in $(seq "$ROUNDS"); do
    rm -f "$T"/m* "$T/copy"
    for i in 0 1 2 3; do truncate -s "$MEMBER" "$T/m$i"; done
    "$BIN" create --level raid0 "$T/m0" "$T/m1" > /dev/null
    "$BIN" write "$T/m0" "$T/m1" < "$T/data" > /dev/null
    "$BIN" add --grow "$T/m2" -- "$T/m0" "$T/m1" > /dev/null
    "$BIN" add --grow "$T/m3" -- "$T/m0" "$T/m1" "$T/m2" > /dev/null
    sync
    t0=$(date +%s.%N)
    "$BIN" convert --level raid5 --rate 0 "$T/m0" "$T/m1" "$T/m2" "$T/m3" > "$T/out" 2>&1
    t1=$(date +%s.%N)
    "$BIN" read --length "$((DATA_MIB << 20))" "$T/m0" "$T/m1" "$T/m2" "$T/m3" 2>/dev/null |
        cmp -s - "$T/data" || { echo "round $r: data differs after convert" >&2; exit 1; }
    sync
    t2=$(date +%s.%N)
    cp "$T/data" "$T/copy"
    sync "$T/copy"
    t3=$(date +%s.%N)
    c=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
    p=$(python3 -c "print(f'{$t3 - $t2:.3f}')")
    echo "round $r: convert ${c} s ($(grep -o 'reshape: [0-9]* chunk moves' "$T/out")), cp+sync ${p} s"
    convs+=("$c") cps+=("$p")
done
python3 - "${convs[*]}" "${cps[*]}" "$DATA_MIB" <<'PY'
import statistics, sys
cv = statistics.median(float(x) for x in sys.argv[1].split())
cp = statistics.median(float(x) for x in sys.argv[2].split())
print(f"median: convert {cv:.2f} s, cp {cp:.2f} s of {sys.argv[3]} MiB")
print(f"convert / cp = {cv / cp:.2f}x (target <= 3.0): {'PASS' if cv / cp <= 3.0 else 'MISS'}")
PY
