#!/usr/bin/env bash
# What TLS costs: sequential 1 MiB reads and writes at queue depth 16 through one
# `damocles serve --tls on` export on 127.0.0.1, once over plain NBD (nbd://) and once
# over TLS with a pre-shared key (nbds://, TLS 1.3 as libnbd/GnuTLS negotiate it), in the
# same run, interleaved, with medians. See bench/README.md ("TLS cost").
#
# Client: nbdcopy (libnbd), one connection, 16 requests in flight of 1 MiB, extents not
# queried (every byte is read). fio's nbd engine cannot be used: libnbd refuses the
# tls-psk-file= URI parameter to programs that do not allow local files, as fio does not.
# A write run copies TEST_SIZE bytes of random data from a file in the page cache and
# includes the final FLUSH (--flush); a read run copies the whole export to null:.
#
# Knobs: ROUNDS (5) TEST_SIZE (1G: the export's size) MEMBER_SIZE (512M, 4 members,
# raid5) QUICK=1 (1 round of 256M) WORKLOADS ("read write") DAMOCLES=path (skip the
# build) BENCH_TMPDIR KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

ROUNDS=${ROUNDS:-5}
TEST_SIZE=${TEST_SIZE:-1G}
MEMBER_SIZE=${MEMBER_SIZE:-512M}
if [ "${QUICK:-0}" = 1 ]; then
    ROUNDS=1
    TEST_SIZE=256M
fi
TARGET=0.8

for t in nbdcopy:libnbd-bin nbdinfo:libnbd-bin psktool:gnutls-bin python3:python3; do
    command -v "${t%%:*}" >/dev/null 2>&1 || {
        echo "error: ${t%%:*} is missing (apt-get install ${t#*:})" >&2
        exit 1
    }
done
build_damocles
make_tmpdir damocles-tls-cost

echo "## raid5 of 4 × $MEMBER_SIZE sparse files in $T ($fstype), export $TEST_SIZE" >&2
members=()
for i in 0 1 2 3; do
    truncate -s "$MEMBER_SIZE" "$T/m$i.img"
    members+=("$T/m$i.img")
done
"$DAMOCLES" create --level raid5 --name bench --size "$TEST_SIZE" "${members[@]}" >"$T/create.out"
psktool -u bench -p "$T/keys.psk" >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
XDG_RUNTIME_DIR=$T DAMOCLES_LOG=damocles_nbd=info "$DAMOCLES" serve --listen "127.0.0.1:$port" --tls on \
    --tls-psk-file "$T/keys.psk" "${members[@]}" >"$T/serve.out" 2>"$T/serve.err" &
PIDS+=("$!")
NAMES+=("damocles-raid5")
pid=$!
for _ in $(seq 600); do
    grep -q '^serving ' "$T/serve.out" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "error: serve exited:" >&2; cat "$T/serve.err" >&2; exit 1; }
    sleep 0.1
done
grep -q '^serving ' "$T/serve.out" || { echo "error: serve not ready" >&2; exit 1; }

declare -A U=(
    [plain]="nbd://127.0.0.1:$port/bench"
    [tls]="nbds://bench@127.0.0.1:$port/bench?tls-psk-file=$T/keys.psk"
)
copy=(nbdcopy --connections=1 --requests=16 --request-size=1048576 --no-extents)
size=$(nbdinfo --size "${U[plain]}")

echo "## source: $TEST_SIZE of random data" >&2
head -c "$size" /dev/urandom >"$T/src.bin"
# Every chunk written once, so no read meets a never-written chunk (answered as zeros).
"${copy[@]}" --flush "$T/src.bin" "${U[plain]}"
sync

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

# run WORKLOAD MODE — one timed copy; appends "workload mode µs server-ticks client-s".
run() {
    local w=$1 m=$2 t0 t1 c0 c1 client
    c0=$(cpu_ticks)
    t0=$(date +%s%N)
    # bash's `time` gives the client's user + system CPU.
    if [ "$w" = write ]; then
        { TIMEFORMAT='%U %S'; time timeout 600 "${copy[@]}" --flush "$T/src.bin" "${U[$m]}"; } 2>"$T/res/time"
    else
        { TIMEFORMAT='%U %S'; time timeout 600 "${copy[@]}" "${U[$m]}" null:; } 2>"$T/res/time"
    fi
    t1=$(date +%s%N)
    c1=$(cpu_ticks)
    client=$(tail -1 "$T/res/time" | awk '{print $1 + $2}')
    echo "$w $m $(( (t1 - t0) / 1000 )) $(( c1 - c0 )) $client" >>"$T/res/runs"
    if [ "$w" = write ]; then sync; fi
}

for r in $(seq "$ROUNDS"); do
    # Alternate which goes first.
    if [ $((r % 2)) = 1 ]; then order="plain tls"; else order="tls plain"; fi
    for w in ${WORKLOADS:-read write}; do
        for m in $order; do
            echo "## round $r/$ROUNDS: seq $w, $m" >&2
            run "$w" "$m"
        done
    done
done
check_alive
grep -q 'TLS client: TLSv1.3' "$T/serve.err" ||
    echo "warning: no TLS 1.3 connection in the server log" >&2
tls_line=$(grep -m1 -o 'TLS client: [^,]*, [^,]*' "$T/serve.err" || true)

python3 - "$T/res/runs" "$size" "$TARGET" "$ROUNDS" "${tls_line#TLS client: }" <<'EOF'
import statistics, sys
runs, size, target, rounds, suite = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
res = {}
for line in open(runs):
    w, m, us, ticks, client = line.split()
    res.setdefault((w, m), []).append((int(us) / 1e6, int(ticks) / 100, float(client)))
print(f"seq 1 MiB QD16, one connection, {size >> 20} MiB per run, {rounds} rounds, medians"
      f" (TLS: {suite or 'see serve.err'})")
print()
print("| workload | plain MB/s | TLS MB/s | TLS / plain | server CPU s/GiB plain / TLS "
      "| client CPU s/GiB plain / TLS | target |")
print("| --- | --- | --- | --- | --- | --- | --- |")
gib = size / 2**30
for w in [w for w in ("read", "write") if (w, "plain") in res]:
    med = lambda m, f: statistics.median(f(r) for r in res[(w, m)])
    mbs = {m: med(m, lambda r: size / r[0] / 1e6) for m in ("plain", "tls")}
    srv = {m: med(m, lambda r: r[1] / gib) for m in ("plain", "tls")}
    cli = {m: med(m, lambda r: r[2] / gib) for m in ("plain", "tls")}
    ratio = mbs["tls"] / mbs["plain"]
    verdict = "PASS" if ratio >= target else "MISS"
    print(f"| seq {w} | {mbs['plain']:.0f} | {mbs['tls']:.0f} | {ratio:.2f}× | "
          f"{srv['plain']:.2f} / {srv['tls']:.2f} | {cli['plain']:.2f} / {cli['tls']:.2f} "
          f"| ≥ {target}× {verdict} |")
print()
for w in [w for w in ("read", "write") if (w, "plain") in res]:
    for m in ("plain", "tls"):
        print(f"{w} {m}: " + " ".join(f"{size / r[0] / 1e6:.0f}" for r in res[(w, m)]) + " MB/s")
EOF
