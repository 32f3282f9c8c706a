#!/usr/bin/env bash
# Compare damocles' parity kernels with snapraid's built-in speed test on this
# machine, in interleaved rounds. Both are single-threaded and cache-resident:
#   snapraid -T : 8 data buffers x 256 KiB, MB/s of data (gen2 = P+Q, rec2 =
#                 recover two data blocks), each function timed once a round.
#   damocles    : `damocles bench parity` rows, GB/s of data (gen_pq,
#                 recover_two_data, ...), per kernel and stripe shape, the best
#                 of its timing windows.
# Each round runs snapraid -T, then damocles bench parity. The summary gives
# per-round figures for the 8 x 256 KiB shape (snapraid's fastest gen2 kernel
# of that round against damocles' best kernel's gen_pq), the median of the
# rounds' ratios against the target (>= 1.0x), the best round of each (the
# least disturbed one on a shared machine; snapraid's single timing suffers
# more from other load than damocles' best-of windows) and the median of
# every damocles row over the rounds.
# Usage: bench/parity-vs-snapraid.sh   (from anywhere inside the repo)
# Knobs: ROUNDS (default 3), SECONDS_PER_ROW (damocles --seconds, default 0.2),
#        DAMOCLES=path (skip the build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECONDS_PER_ROW=${SECONDS_PER_ROW:-0.2}

if ! command -v snapraid >/dev/null 2>&1; then
    echo "## installing snapraid" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y snapraid >/dev/null || {
        $SUDO apt-get update >/dev/null && $SUDO apt-get install -y snapraid >/dev/null
    }
fi
if [ -z "${DAMOCLES:-}" ]; then
    cargo build --release -q -p damocles
    DAMOCLES=target/release/damocles
fi

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

echo "## CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
for r in $(seq 1 "$ROUNDS"); do
    echo "## round $r/$ROUNDS" >&2
    snapraid -T >"$T/snapraid.$r" 2>&1
    "$DAMOCLES" bench parity --seconds "$SECONDS_PER_ROW" >"$T/damocles.$r"
done

echo
echo "## snapraid -T, last round (MB/s, 8 x 256 KiB)"
# Keep the header and the parity sections; drop the hash/CRC noise.
awk '/^CPU|^Speed test|memset/ {print} /^RAID functions/ {on=1} /^If the/ {on=0} on {print}' \
    "$T/snapraid.$ROUNDS"

best=$(awk '/^best kernel/ {print $NF}' "$T/damocles.1")
# fastest kernel of one snapraid function in one round, GB/s
sr() { awk -v f="$1" '$1 == f { m = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/ && $i + 0 > m) m = $i; printf "%.1f\n", m / 1000 }' "$2"; }
# one damocles row (kernel, op, data blocks, block) in one round, GB/s
dm() { awk -v k="$1" -v o="$2" -v n="$3" -v b="$4" '$1 == k && $2 == o && $3 == n && $4 == b { print $5 }' "$5"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo
echo "## 8 x 256 KiB, GB/s of data: snapraid's fastest kernel vs damocles $best, same round"
# (snapraid's rec2 is shown as measured; it is not comparable with
# recover_two_data, which is why it gets no ratio.)
printf "%-6s %10s %11s %7s %10s %17s\n" round "snap gen2" "dam gen_pq" ratio "snap rec2" "dam rec_two_data"
: >"$T/ratios"
for r in $(seq 1 "$ROUNDS"); do
    g2=$(sr gen2 "$T/snapraid.$r")
    r2=$(sr rec2 "$T/snapraid.$r")
    pq=$(dm "$best" gen_pq 8 256K "$T/damocles.$r")
    rt=$(dm "$best" recover_two_data 8 256K "$T/damocles.$r")
    a=$(awk -v x="$pq" -v y="$g2" 'BEGIN { printf "%.2f", x / y }')
    echo "$a" >>"$T/ratios"
    printf "%-6s %10s %11s %6sx %10s %17s\n" "$r" "$g2" "$pq" "$a" "$r2" "$rt"
done
allg2=$(for r in $(seq 1 "$ROUNDS"); do sr gen2 "$T/snapraid.$r"; done)
allpq=$(for r in $(seq 1 "$ROUNDS"); do dm "$best" gen_pq 8 256K "$T/damocles.$r"; done)
mg2=$(median <<<"$allg2")
mpq=$(median <<<"$allpq")
bg2=$(sort -g <<<"$allg2" | tail -1)
bpq=$(sort -g <<<"$allpq" | tail -1)
mra=$(median <"$T/ratios")
verdict=$(awk -v x="$mra" 'BEGIN { print (x >= 1.0) ? "PASS" : "MISS" }')
echo "median: snapraid gen2 $mg2, damocles gen_pq $mpq GB/s; median of the rounds' ratios ${mra}x (target >= 1.0x: $verdict)"
echo "best round of each: snapraid gen2 $bg2, damocles gen_pq $bpq GB/s: $(awk -v x="$bpq" -v y="$bg2" 'BEGIN { printf "%.2f", x / y }')x"

echo
echo "## damocles bench parity, median of $ROUNDS rounds (GB/s of data, one core)"
printf "%-12s %-20s %6s %9s %9s\n" kernel operation data block GB/s
awk '$5 ~ /^[0-9.]+$/ && NF == 5 { print $1, $2, $3, $4 }' "$T/damocles.1" |
    while read -r k o n b; do
        m=$(for r in $(seq 1 "$ROUNDS"); do dm "$k" "$o" "$n" "$b" "$T/damocles.$r"; done | median)
        printf "%-12s %-20s %6s %9s %9s\n" "$k" "$o" "$n" "$b" "$m"
    done
