#!/usr/bin/env bash
# What the metrics cost: one raid5 (4 file members) served in turn with `serve --metrics`
# (the exports' per-request counters and latency histogram on, scraped with curl every
# SCRAPE seconds, as Prometheus would) and without, through fio's nbd engine (1 job,
# iodepth 16) over a Unix socket. The members' and volumes' I/O counters (relaxed atomics,
# no lock per request) count in both runs, so their cost is in both columns; the scrapes
# (array status, every volume's and member's figures) are in the metrics one. The server
# is restarted for every run, so both serve the same members from the same page cache;
# rounds interleaved (order rotated); medians of MB/s and of the server's CPU µs per I/O;
# ratio metrics/plain per workload.
#
# Usage: bench/metrics-overhead.sh     QUICK=1 (1 round of 3 s)
#        ROUNDS RUNTIME RAMP IODEPTH MEMBER_SIZE TEST_SIZE SCRAPE BENCH_TMPDIR DAMOCLES KEEP
#        WORKLOADS="seqwrite" (a subset of seqread seqwrite randread); SCRAPE=0: no scrapes
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${QUICK:-0}" = 1 ]; then
    ROUNDS=${ROUNDS:-1}; RUNTIME=${RUNTIME:-3}; RAMP=${RAMP:-1}
else
    ROUNDS=${ROUNDS:-3}; RUNTIME=${RUNTIME:-8}; RAMP=${RAMP:-1}
fi
IODEPTH=${IODEPTH:-16}
MEMBER_SIZE=${MEMBER_SIZE:-256M}
TEST_SIZE=${TEST_SIZE:-512M}
SCRAPE=${SCRAPE:-1}

. bench/lib.sh
need_tools fio:fio curl:curl
build_damocles
make_tmpdir damocles-metrics-bench

for i in 1 2 3 4; do truncate -s "$MEMBER_SIZE" "$T/m$i"; done
"$DAMOCLES" create --level raid5 "$T/m"{1..4} >"$T/create" 2>&1 || { cat "$T/create" >&2; exit 1; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# start NAME — serves the array as NAME (plain, or metrics with the scraper running).
start() {
    if [ "$1" = metrics ]; then
        start_damocles metrics --control "$T/ctl" --metrics "127.0.0.1:$PORT" "$T/m"{1..4}
        SCRAPER=""
        if [ "$SCRAPE" != 0 ]; then
            ( while sleep "$SCRAPE"; do curl -sf "http://127.0.0.1:$PORT/metrics" >/dev/null || true; done ) &
            SCRAPER=$!
        fi
    else
        start_damocles plain --control "$T/ctl" "$T/m"{1..4}
    fi
}
stop() {
    if [ "$1" = metrics ] && [ -n "$SCRAPER" ]; then
        kill "$SCRAPER" 2>/dev/null || true
        wait "$SCRAPER" 2>/dev/null || true
    fi
    stop_named "$1"
}
SERVERS=(plain metrics)
read -r -a WORKLOADS <<<"${WORKLOADS:-seqread seqwrite randread}"
declare -A RW=([seqread]=read [seqwrite]=write [randread]=randread)
declare -A BS=([seqread]=1M [seqwrite]=1M [randread]=4k)
echo "## damocles $("$DAMOCLES" --version | awk '{print $2}'), fio $(fio --version); $(nproc) cores, $T ($fstype)"
echo "## $ROUNDS round(s) x ${RUNTIME}s (+${RAMP}s ramp), iodepth $IODEPTH; scrape every ${SCRAPE}s"
start plain
runfio "$T/prefill.json" plain --rw=write --bs=1M --end_fsync=1
stop plain
sync
CLK_TCK=$(getconf CLK_TCK)
for r in $(seq 1 "$ROUNDS"); do
    for w in "${WORKLOADS[@]}"; do
        for k in 0 1; do
            s=${SERVERS[$(((k + r - 1) % 2))]}
            start "$s"
            pid=$(server_pid "$s")
            c0=$(cpu_ticks "$pid"); t0=$(date +%s%N)
            runfio "$T/res/$w.$s.$r.json" "$s" --rw="${RW[$w]}" --bs="${BS[$w]}" \
                --time_based --runtime="$RUNTIME" --ramp_time="$RAMP"
            echo "$CLK_TCK $c0 $(cpu_ticks "$pid") $t0 $(date +%s%N)" >"$T/res/$w.$s.$r.cpu"
            if [[ $w == *write ]]; then
                runfio "$T/settle.json" "$s" --rw=write --bs=4k --io_size=4k --end_fsync=1
            fi
            stop "$s"
            sync
        done
    done
done

python3 - "$T/res" "$ROUNDS" <<'PY'
import json, os, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
def load(p):
    t = open(p).read(); j = json.loads(t[t.index("{"):])["jobs"][0]
    side = j["read"] if j["read"]["io_bytes"] else j["write"]
    hz, c0, c1, t0, t1 = (int(x) for x in open(p[:-5] + ".cpu").read().split())
    cpu = (c1 - c0) / hz / ((t1 - t0) / 1e9) / side["iops"] * 1e6 if side["iops"] else 0
    return side["bw_bytes"] / 1e6, cpu
print(f"\n{'workload':<14}{'server':<10}{'MB/s':>10}{'CPU us/IO':>11}{'runs':>6}")
med = {}
for w, label in [("seqread", "seq read 1M"), ("seqwrite", "seq write 1M"), ("randread", "rand read 4k")]:
    for s in ["plain", "metrics"]:
        v = [load(os.path.join(d, f"{w}.{s}.{r}.json")) for r in range(1, rounds + 1)
             if os.path.exists(os.path.join(d, f"{w}.{s}.{r}.json"))]
        if not v:
            print(f"{label:<14}{s:<10}{'FAILED':>10}"); continue
        med[(w, s)] = (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
        print(f"{label:<14}{s:<10}{med[(w, s)][0]:>10.1f}{med[(w, s)][1]:>11.1f}{len(v):>6}")
    if (w, "plain") in med and (w, "metrics") in med:
        a, b = med[(w, "metrics")], med[(w, "plain")]
        print(f"{'':<14}{'ratio':<10}{a[0] / b[0]:>9.2f}x{a[1] / b[1] if b[1] else 0:>10.2f}x")
print("\nmedians over the rounds; ratio = metrics / plain (MB/s: higher is better, CPU: lower)")
PY
