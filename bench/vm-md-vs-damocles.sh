#!/usr/bin/env bash
# damocles raid5 against the kernel's md raid5, in the same Linux guest (issue 17, part 3).
#
#   bash bench/vm-md-vs-damocles.sh            # from anywhere; prints a markdown table
#
# What it needs on the host: qemu-system-x86_64 (qemu-system-x86), cpio, gzip, xz (xz-utils),
# depmod (kmod), readelf and strip (binutils), dpkg-deb, apt-get and apt's package lists,
# and cargo (or DAMOCLES=/path/to/a/release/damocles). `.ci/install-test-deps.sh` installs
# the packages. Nothing else is installed: the guest image is the VM test suite's
# (crates/cli/tests/vm/build-image.sh, Debian's kernel and a busybox initramfs with fio,
# mdadm and nbd-client, cached under target/vm-image/), and this build's damocles binary
# (stripped) is appended to it.
#
# The guest (no network, -smp 2, MEM MiB) gets ten virtio-blk disks, raw files of SIZE_MIB
# each in a tmpdir under BENCH_TMPDIR (default /var/tmp, disk-backed), all with the same
# QEMU cache mode (CACHE: none, i.e. O_DIRECT on the host, when the tmpdir takes it; else
# writeback):
#   vda-vdd  md raid5 (mdadm --create --level=5 --chunk=64 --assume-clean, no bitmap, no
#            write journal: md keeps its write hole), vde its replacement member;
#   vdf-vdi  damocles raid5 (create --level raid5, default 64 KiB stripe unit, default write
#            journal on the members), served by damocles inside the guest on 127.0.0.1 and
#            attached by the guest kernel's nbd client (nbd-client -C CONNS) as /dev/nbd0;
#            vdj its replacement member.
# Both arrays are filled end to end first (fio 1 MiB writes), so no read hits a hole.
# Then, ROUNDS times, for each workload md and damocles back to back (order swapped each
# round), fio --direct=1 --ioengine=libaio --iodepth=16 --time_based --runtime=RUNTIME
# --ramp_time=RAMP on the raw block device: sequential 1 MiB read and write, random 4 KiB
# read and write. After each write run an unmeasured `blockdev --flushbufs` (a FLUSH)
# settles the array so its deferred work does not land in the next run. Medians.
# Then, once each:
#   rebuild  a member failed (mdadm --fail/--remove; damocles fail 1), the replacement
#            added (mdadm --add; damocles add), timed until md's degraded count is 0 and
#            its sync_action idle / damocles' health is ok with no rebuild running;
#   grow     raid0 over two members (md: --chunk=64; damocles: create --level raid0) with
#            GROW_MIB of data (fio 1 MiB writes + FLUSH), then md: mdadm --grow --level=5
#            --raid-devices=4 --add (two disks) against damocles: add --grow twice +
#            convert --level raid5 --rate 0, timed until md shows raid5 on 4 disks, not
#            degraded, idle / damocles' reshape is over with no chunk left to move.
# md's resync speed limit is raised (dev.raid.speed_limit_max = 2 GB/s) so neither side is
# throttled. The guest prints RESULT lines on its serial console; the host makes the table.
#
# Knobs (environment): SIZE_MIB (256) ROUNDS (3) RUNTIME (8 s) RAMP (1 s) CONNS (4)
# GROW_MIB (3/4 of the raid0) MEM (2048) CACHE (auto) ACCEL (auto: KVM when a probe boot
# works within 20 s, else TCG; or kvm / tcg) CPU (the guest's -cpu: host under KVM,
# QEMU's default qemu64 under TCG) LIMIT (guest time limit, 5400 s) KEEP=1 keeps
# the tmpdir. DAMOCLES=path skips `cargo build --release -p damocles`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
SIZE_MIB=${SIZE_MIB:-256}
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-8}
RAMP=${RAMP:-1}
CONNS=${CONNS:-4}
GROW_MIB=${GROW_MIB:-$((SIZE_MIB * 2 * 3 / 4))}
MEM=${MEM:-2048}
CACHE=${CACHE:-auto}
ACCEL=${ACCEL:-auto}
LIMIT=${LIMIT:-5400}

missing=()
for t in qemu-system-x86_64:qemu-system-x86 cpio:cpio gzip:gzip xz:xz-utils depmod:kmod \
    readelf:binutils strip:binutils dpkg-deb:dpkg apt-get:apt apt-cache:apt; do
    command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "error: missing tools; install: apt-get install $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')" >&2
    echo "       (or run .ci/install-test-deps.sh)" >&2
    exit 2
fi

TD=${CARGO_TARGET_DIR:-target}
case $TD in /*) ;; *) TD="$(pwd)/$TD" ;; esac
if [ -n "${DAMOCLES:-}" ]; then
    BIN=$(realpath "$DAMOCLES")
else
    echo "## cargo build --release -p damocles" >&2
    cargo build --release -q -p damocles >&2
    BIN="$TD/release/damocles"
fi
echo "## guest image (crates/cli/tests/vm/build-image.sh)" >&2
IMG=$(bash crates/cli/tests/vm/build-image.sh "$TD/vm-image" | tail -1)

T=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/damocles-vmbench.XXXXXX")
QPID=""
cleanup() {
    local rc=$?
    if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
        kill -KILL "$QPID" 2>/dev/null || true
        wait "$QPID" 2>/dev/null || true
    fi
    if [ "${KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
        echo "## tmpdir kept: $T" >&2
    else
        rm -rf "$T"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for i in $(seq 0 9); do truncate -s "${SIZE_MIB}M" "$T/d$i.img"; done
if [ "$CACHE" = auto ]; then
    if dd if=/dev/zero of="$T/direct.test" bs=4096 count=1 oflag=direct 2>/dev/null; then
        CACHE=none
    else
        CACHE=writeback
    fi
    rm -f "$T/direct.test"
fi
AIO=threads
[ "$CACHE" = none ] && AIO=native

if [ "$ACCEL" = auto ]; then
    ACCEL=tcg
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        # A guest can hang at boot under nested virtualisation: probe with a short boot
        # (the bare image prints its BOOTED line and powers off).
        timeout 20 qemu-system-x86_64 -accel kvm -m 512 -nic none -display none \
            -monitor none -no-reboot -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" \
            -append "console=ttyS0 quiet panic=-1" -serial "file:$T/probe.serial" \
            >/dev/null 2>&1 || true
        grep -q 'DAMOCLES-VM: BOOTED' "$T/probe.serial" 2>/dev/null && ACCEL=kvm
    fi
    echo "## accelerator: $ACCEL (probe: KVM $([ "$ACCEL" = kvm ] && echo booted || echo 'unavailable or no boot within 20 s'))" >&2
fi
# The guest's CPU model: under KVM the host's own (what a hypervisor host gives its VMs);
# under TCG QEMU's default, qemu64 (SSE2, no SSE4.2 or SSSE3), so md and damocles both run
# their plain x86-64 paths. `CPU=max` gives the guest all TCG emulates (SSE4.2, PCLMUL,
# AVX2), and every instruction of those is emulated by a helper: damocles' CRC-32C and
# parity kernels then ran slower than its table and scalar paths (bench/README.md).
if [ -z "${CPU:-}" ]; then
    CPU=qemu64
    [ "$ACCEL" = kvm ] && CPU=host
fi

mkdir -p "$T/scn/bin"
strip -o "$T/scn/bin/damocles" "$BIN"
cat >"$T/scn/scenario.sh" <<EOF
RUNTIME=$RUNTIME
RAMP=$RAMP
CONNS=$CONNS
ROUNDS=$ROUNDS
GROW_MIB=$GROW_MIB
EOF
cat >>"$T/scn/scenario.sh" <<'EOF'
export XDG_RUNTIME_DIR=/run
ip link set lo up || fail "lo up"
echo 2000000 >/proc/sys/dev/raid/speed_limit_max
now() { cut -d' ' -f1 /proc/uptime; }
MD="/dev/vda /dev/vdb /dev/vdc /dev/vdd"
DM="/dev/vdf /dev/vdg /dev/vdh /dev/vdi"
dstatus() { damocles status --json | tr -d ' \n'; }
# The "reshape" object's "running" field (the status JSON has one "running" per job).
reshape_running() { dstatus | grep -o '"reshape":{[^}]*' | grep -q '"running":true'; }
serve() { # MEMBER...
    rm -f /tmp/serve.out
    damocles serve --listen 127.0.0.1:10809 "$@" >/tmp/serve.out 2>&1 &
    SPID=$!
    n=0
    until grep -q '^serving ' /tmp/serve.out 2>/dev/null; do
        n=$((n + 1)); [ $n -gt 600 ] && { cat /tmp/serve.out; fail "damocles serve did not start"; }
        sleep 0.1
    done
    nbd-client 127.0.0.1 10809 /dev/nbd0 -N b -C $CONNS >/dev/null || fail "nbd-client -C $CONNS"
}
unserve() {
    nbd-client -d /dev/nbd0 >/dev/null 2>&1 || fail "nbd-client -d"
    kill $SPID; wait $SPID
}
fill() { # DEV [SIZE]
    fio --name=fill --filename=$1 --rw=write --bs=1M --iodepth=16 --ioengine=libaio \
        --direct=1 ${2:+--size=$2} --end_fsync=1 >/tmp/fill.out 2>&1 || { cat /tmp/fill.out; fail "fill $1"; }
    blockdev --flushbufs $1
}
run() { # ROUND TEST TARGET DEV RW BS
    fio --name=b --filename=$4 --rw=$5 --bs=$6 --iodepth=16 --ioengine=libaio --direct=1 \
        --time_based --runtime=$RUNTIME --ramp_time=$RAMP --norandommap --randrepeat=0 \
        --minimal >/tmp/f.out 2>/tmp/f.err || { cat /tmp/f.err; fail "fio $2 on $3"; }
    case $5 in
    *read) awk -F';' -v t="$2 $3 $1" '{ printf "RESULT %s %.1f %d\n", t, $7 * 1024 / 1e6, $8 }' /tmp/f.out ;;
    *) awk -F';' -v t="$2 $3 $1" '{ printf "RESULT %s %.1f %d\n", t, $48 * 1024 / 1e6, $49 }' /tmp/f.out
       blockdev --flushbufs $4 ;;
    esac
}

# --- raid5 against raid5 -------------------------------------------------------------
mdadm --create /dev/md0 --run --quiet --level=5 --raid-devices=4 --chunk=64 --assume-clean \
    --bitmap=none $MD || fail "mdadm --create md0"
damocles create --level raid5 --name b $DM >/dev/null || fail "damocles create"
serve $DM
echo "sizes: md0 $(blockdev --getsize64 /dev/md0) nbd0 $(blockdev --getsize64 /dev/nbd0)"
t0=$(now); fill /dev/md0; t1=$(now); fill /dev/nbd0; t2=$(now)
echo "RESULT fill md 1 $(awk -v a=$t0 -v b=$t1 'BEGIN { print b - a }') 0"
echo "RESULT fill damocles 1 $(awk -v a=$t1 -v b=$t2 'BEGIN { print b - a }') 0"
step FILLED
r=1
while [ $r -le $ROUNDS ]; do
    for w in "seqread read 1M" "seqwrite write 1M" "randread randread 4k" "randwrite randwrite 4k"; do
        set -- $w
        if [ $((r % 2)) -eq 1 ]; then
            run $r $1 md /dev/md0 $2 $3; run $r $1 damocles /dev/nbd0 $2 $3
        else
            run $r $1 damocles /dev/nbd0 $2 $3; run $r $1 md /dev/md0 $2 $3
        fi
    done
    step "ROUND $r"
    r=$((r + 1))
done

# --- rebuild of a member full of data --------------------------------------------------
mdadm /dev/md0 --fail /dev/vdb --remove /dev/vdb >/dev/null 2>&1 || fail "mdadm --fail"
t0=$(now)
mdadm /dev/md0 --add /dev/vde >/dev/null || fail "mdadm --add"
until [ "$(cat /sys/block/md0/md/degraded)" = 0 ] && [ "$(cat /sys/block/md0/md/sync_action)" = idle ]; do sleep 0.2; done
t1=$(now)
echo "RESULT rebuild md 1 $(awk -v a=$t0 -v b=$t1 'BEGIN { print b - a }') 0"
damocles fail 1 >/dev/null || fail "damocles fail 1"
t0=$(now)
damocles add /dev/vdj >/dev/null || fail "damocles add"
until dstatus | grep -q '"health":"ok"' && ! dstatus | grep -o '"rebuild":{[^}]*' | grep -q '"running":true'; do sleep 0.2; done
t1=$(now)
echo "RESULT rebuild damocles 1 $(awk -v a=$t0 -v b=$t1 'BEGIN { print b - a }') 0"
damocles status | sed 's/^/status: /'
step REBUILT
unserve
mdadm --stop /dev/md0 >/dev/null || fail "mdadm --stop"
mdadm --zero-superblock /dev/vda /dev/vdb /dev/vdc /dev/vdd /dev/vde

# --- raid0(2) -> raid5(4) ---------------------------------------------------------------
mdadm --create /dev/md1 --run --quiet --level=0 --raid-devices=2 --chunk=64 /dev/vda /dev/vdb ||
    fail "mdadm --create md1"
fill /dev/md1 ${GROW_MIB}M
t0=$(now)
mdadm --grow /dev/md1 --level=5 --raid-devices=4 --add /dev/vdc /dev/vdd \
    --backup-file=/tmp/md1.backup >/tmp/grow.out 2>&1 || { cat /tmp/grow.out; fail "mdadm --grow"; }
n=0
until [ "$(cat /sys/block/md1/md/level)" = raid5 ] && [ "$(cat /sys/block/md1/md/raid_disks)" = 4 ] &&
    [ "$(cat /sys/block/md1/md/degraded)" = 0 ] && [ "$(cat /sys/block/md1/md/sync_action)" = idle ] &&
    ! grep -q reshape /proc/mdstat; do
    n=$((n + 1)); [ $((n % 150)) -eq 0 ] && sed 's/^/mdstat: /' /proc/mdstat
    sleep 0.2
done
t1=$(now)
echo "RESULT grow md 1 $(awk -v a=$t0 -v b=$t1 'BEGIN { print b - a }') 0"
sed 's/^/mdstat: /' /proc/mdstat
damocles create --force --level raid0 --name b /dev/vdf /dev/vdg >/dev/null || fail "damocles create raid0"
serve /dev/vdf /dev/vdg
fill /dev/nbd0 ${GROW_MIB}M
t0=$(now)
damocles add --force --grow /dev/vdh >/dev/null || fail "add --grow vdh"
damocles add --force --grow /dev/vdi >/dev/null || fail "add --grow vdi"
damocles convert --level raid5 --background --rate 0 >/dev/null || fail "damocles convert"
until ! reshape_running && dstatus | grep -q '"chunks_to_move":0[,}]'; do sleep 0.2; done
t1=$(now)
echo "RESULT grow damocles 1 $(awk -v a=$t0 -v b=$t1 'BEGIN { print b - a }') 0"
damocles status | sed 's/^/status: /'
unserve
EOF

cat "$IMG/initrd.img" >"$T/initrd.img"
(cd "$T/scn" && find . -mindepth 1 | cpio -o -H newc --quiet | gzip -1) >>"$T/initrd.img"

drives=()
for i in $(seq 0 9); do
    drives+=(-drive "file=$T/d$i.img,format=raw,if=none,id=d$i,cache=$CACHE,aio=$AIO"
        -device "virtio-blk-pci,drive=d$i,serial=d$i")
done
echo "## guest: $ACCEL, -cpu $CPU, 10 x ${SIZE_MIB} MiB disks (cache=$CACHE), $ROUNDS rounds of ${RUNTIME}+${RAMP} s" >&2
qemu-system-x86_64 -accel "$ACCEL" -cpu "$CPU" -m "$MEM" -smp 2 -nic none -display none -monitor none \
    -no-reboot -kernel "$IMG/vmlinuz" -initrd "$T/initrd.img" \
    -append "console=ttyS0 quiet panic=-1" -serial "file:$T/serial" "${drives[@]}" \
    2>"$T/qemu.stderr" &
QPID=$!
start=$(date +%s)
seen=0
while :; do
    # Progress lines (STEP, sizes) as they come.
    n=0
    [ -f "$T/serial" ] && n=$(wc -l <"$T/serial")
    if [ "$n" -gt "$seen" ]; then
        sed -n "$((seen + 1)),${n}p" "$T/serial" | grep -E '^(DAMOCLES-VM: STEP|sizes:)' >&2 || true
        seen=$n
    fi
    grep -q '^DAMOCLES-VM: PASS' "$T/serial" 2>/dev/null && break
    if grep -q -E '^DAMOCLES-VM: FAIL' "$T/serial" 2>/dev/null || ! kill -0 "$QPID" 2>/dev/null; then
        echo "error: the guest failed:" >&2
        cat "$T/serial" "$T/qemu.stderr" >&2
        exit 1
    fi
    if [ $(($(date +%s) - start)) -gt "$LIMIT" ]; then
        echo "error: the guest did not finish within $LIMIT s:" >&2
        cat "$T/serial" >&2
        exit 1
    fi
    sleep 1
done
wait "$QPID" 2>/dev/null || true
QPID=""
grep -E '^(status|mdstat): ' "$T/serial" >&2 || true

# RESULT TEST TARGET ROUND VALUE IOPS -> one row per test: medians, ratio damocles/md.
grep '^RESULT ' "$T/serial" | awk -v accel="$ACCEL" -v cpu="$CPU" -v cache="$CACHE" -v size="$SIZE_MIB" \
    -v rounds="$ROUNDS" -v conns="$CONNS" -v grow="$GROW_MIB" '
function median(key,   n, i, j, t, v) {
    n = split(vals[key], v, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
    lo = v[1]; hi = v[n]
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
# "median (min-max)": the min and max are those of the last median() call
function cell(m, fmt) { return sprintf(fmt " (" fmt "-" fmt ")", m, lo, hi) }
{ vals[$2 " " $3] = vals[$2 " " $3] " " $5; iops[$2 " " $3] = iops[$2 " " $3] " " $6 }
END {
    printf "guest: %s, -cpu %s, 2 vCPUs, 4 x %d MiB virtio disks per array (cache=%s), nbd-client -C %d\n\n", toupper(accel), cpu, size, cache, conns
    print "| test | md raid5 | damocles raid5 | damocles / md |"
    print "|---|---|---|---|"
    n = split("seqread seqwrite randread randwrite", ws, " ")
    for (i = 1; i <= n; i++) {
        if (ws[i] ~ /^rand/) {
            m = median2(ws[i] " md"); mc = cell(m, "%d"); d = median2(ws[i] " damocles"); dc = cell(d, "%d")
            printf "| %s 4 KiB QD16 (IOPS, median (min-max) of %d) | %s | %s | %.2fx |\n", ws[i], rounds, mc, dc, m ? d / m : 0
        } else {
            m = median(ws[i] " md"); mc = cell(m, "%.1f"); d = median(ws[i] " damocles"); dc = cell(d, "%.1f")
            printf "| %s 1 MiB QD16 (MB/s, median (min-max) of %d) | %s | %s | %.2fx |\n", ws[i], rounds, mc, dc, m ? d / m : 0
        }
    }
    m = median("fill md"); d = median("fill damocles")
    printf "| fill the whole array, 1 MiB writes (s, one run) | %.1f | %.1f | %.2fx |\n", m, d, m ? d / m : 0
    m = median("rebuild md"); d = median("rebuild damocles")
    printf "| rebuild a replaced member, array full (s, one run) | %.1f | %.1f | %.2fx |\n", m, d, m ? d / m : 0
    m = median("grow md"); d = median("grow damocles")
    printf "| raid0(2) -> raid5(4) with %d MiB of data (s, one run) | %.1f | %.1f | %.2fx |\n", grow, m, d, m ? d / m : 0
}
function median2(key,   saved, r) { saved = vals[key]; vals[key] = iops[key]; r = median(key); vals[key] = saved; return r }
'
