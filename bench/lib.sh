# Shared shell helpers for the NBD benchmarks (bench/nbd-vs-peers.sh,
# bench/journal-cost.sh). Source it from the repository root after `set -euo
# pipefail`; it defines functions and globals only, runs nothing by itself.
#
# Globals used / set:
#   DAMOCLES        path of the damocles binary (built if unset)
#   T, fstype       the benchmark tmpdir and its filesystem type
#   PIDS, NAMES     servers started (stopped by their pid on exit)
#   URI[name]       NBD URI of each server
#   RUNTIME RAMP IODEPTH TEST_SIZE   fio run parameters (set by the script)
#   FAILS           number of failed fio runs

# need_tools CMD:PACKAGE... — apt-installs the packages whose command is missing.
need_tools() {
    local need=() all=() p
    for p in "$@"; do
        all+=("${p#*:}")
        command -v "${p%%:*}" >/dev/null 2>&1 || need+=("${p#*:}")
    done
    if [ ${#need[@]} -gt 0 ]; then
        echo "## installing ${all[*]} (missing: ${need[*]})" >&2
        local SUDO=""
        [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update >/dev/null
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "${all[@]}" >/dev/null
    fi
    if ! fio --enghelp=nbd >/dev/null 2>&1; then
        echo "error: this fio has no nbd ioengine (needs fio built with libnbd)" >&2
        exit 1
    fi
    command -v python3 >/dev/null 2>&1 || { echo "error: python3 is needed to parse fio's JSON" >&2; exit 1; }
}

# build_damocles — cargo-builds damocles unless DAMOCLES is set; makes it absolute.
build_damocles() {
    if [ -z "${DAMOCLES:-}" ]; then
        echo "## cargo build --release -p damocles" >&2
        cargo build --release -p damocles >&2
        DAMOCLES="${CARGO_TARGET_DIR:-target}/release/damocles"
    fi
    DAMOCLES=$(realpath "$DAMOCLES")
}

# make_tmpdir PREFIX — creates $T (with $T/res) under BENCH_TMPDIR (default
# /var/tmp, disk-backed) and installs the cleanup traps.
make_tmpdir() {
    local parent=${BENCH_TMPDIR:-/var/tmp}
    T=$(mktemp -d "$parent/$1.XXXXXX")
    fstype=$(stat -f -c %T "$T")
    if [ "$fstype" = tmpfs ] || [ "$fstype" = ramfs ]; then
        echo "warning: $T is on $fstype, not a disk (set BENCH_TMPDIR to a disk-backed dir)" >&2
    fi
    mkdir -p "$T/res"
    PIDS=()
    NAMES=()
    FAILS=0
    declare -gA URI=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# stop_server INDEX — SIGTERM, wait up to 10 s, then SIGKILL; checks damocles'
# exit status (it flushes and exits 0 on SIGTERM).
stop_server() {
    local pid=${PIDS[$1]} n=${NAMES[$1]} st=0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "warning: $n (pid $pid) still running 10 s after SIGTERM; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || st=$?
    case $n in damocles-*) [ "$st" -eq 0 ] || echo "warning: $n exited with status $st after SIGTERM (log: $T/$n.err)" >&2 ;; esac
}

bench_cleanup() {
    local rc=$? i
    for i in "${!PIDS[@]}"; do stop_server "$i"; done
    if [ "${KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
        echo "## tmpdir kept: $T" >&2
    else
        rm -rf "$T"
    fi
}

# wait_pidfile NAME PID PIDFILE — waits until the server wrote its pid file.
wait_pidfile() {
    for _ in $(seq 300); do
        [ -s "$3" ] && return 0
        kill -0 "$2" 2>/dev/null || { echo "error: $1 exited at startup:" >&2; cat "$T/$1.err" >&2; exit 1; }
        sleep 0.1
    done
    echo "error: $1 not ready after 30 s" >&2; exit 1
}

# start_damocles NAME MEMBER... — `damocles serve` on $T/NAME.sock; sets URI[NAME]
# from its `serving ... at URI` line. Waits up to STARTUP_TIMEOUT (120) s (the
# assemble may replay the journal); warns when it took over 10 s.
start_damocles() {
    local n=$1 pid u t0 dt; shift
    t0=$(date +%s%N)
    # Removed here, not just truncated by the redirection: that happens in the
    # background child, possibly after the first grep (restarts would then see
    # the previous process's line).
    rm -f "$T/$n.out"
    "$DAMOCLES" serve --socket "$T/$n.sock" "$@" >"$T/$n.out" 2>>"$T/$n.err" &
    pid=$!
    PIDS+=("$pid"); NAMES+=("$n")
    for _ in $(seq $((${STARTUP_TIMEOUT:-120} * 10))); do
        grep -q '^serving ' "$T/$n.out" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { echo "error: $n exited at startup:" >&2; cat "$T/$n.err" >&2; exit 1; }
        sleep 0.1
    done
    dt=$(( ($(date +%s%N) - t0) / 1000000 ))
    u=$(sed -n 's/^serving .* at \(nbd[^ ]*\).*/\1/p' "$T/$n.out" 2>/dev/null | head -1 || true)
    [ -n "$u" ] || { echo "error: $n did not print its URI after ${dt} ms:" >&2; cat "$T/$n.out" "$T/$n.err" >&2; exit 1; }
    [ "$dt" -le 10000 ] || echo "warning: $n took ${dt} ms to start (log: $T/$n.err)" >&2
    URI[$n]=$u
}

# stop_named NAME — stops the server NAME (as on exit) and forgets it.
stop_named() {
    local i
    for i in "${!NAMES[@]}"; do
        if [ "${NAMES[$i]}" = "$1" ]; then
            stop_server "$i"
            unset "PIDS[$i]" "NAMES[$i]"
        fi
    done
}

# server_pid NAME — pid of a server started by this script.
server_pid() {
    local i
    for i in "${!NAMES[@]}"; do [ "${NAMES[$i]}" = "$1" ] && { echo "${PIDS[$i]}"; return 0; }; done
    return 1
}

# check_alive — warns about servers that died during the run.
check_alive() {
    local i
    for i in "${!PIDS[@]}"; do
        kill -0 "${PIDS[$i]}" 2>/dev/null || echo "warning: ${NAMES[$i]} died during the run (log: $T/${NAMES[$i]}.err)" >&2
    done
}

# runfio OUT-JSON SERVER FIO-ARGS... — one fio job (nbd engine, IODEPTH, one
# job, first TEST_SIZE bytes) under `timeout`; a failure or hang is reported,
# counted in FAILS, and leaves no OUT-JSON.
runfio() {
    local out=$1 s=$2; shift 2
    local lim=$((RUNTIME + RAMP + 120))
    local st=0
    timeout -k 10 "$lim" fio --name="$s" --ioengine=nbd --uri="${URI[$s]}" \
        --iodepth="$IODEPTH" --numjobs=1 --size="$TEST_SIZE" --offset=0 \
        --norandommap --randrepeat=0 \
        --output-format=json --output="$out" "$@" >"$out.log" 2>&1 || st=$?
    if [ "$st" -ne 0 ]; then
        FAILS=$((FAILS + 1))
        if [ "$st" -eq 124 ] || [ "$st" -eq 137 ]; then
            echo "  !! fio against $s timed out after ${lim}s (hang?) — $*" >&2
        else
            echo "  !! fio against $s failed (status $st) — $*" >&2
        fi
        tail -5 "$out.log" >&2 || true
        rm -f "$out"
    fi
}

# cpu_ticks PID — user + system CPU time of a process so far, in clock ticks
# (fields 14 and 15 of /proc/PID/stat, counted after the parenthesised name).
cpu_ticks() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    echo "$st" | awk '{print $12 + $13}'
}

# array_size MEMBER... — the array's size in bytes (damocles status --json).
array_size() {
    "$DAMOCLES" status --json "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["size"])'
}
