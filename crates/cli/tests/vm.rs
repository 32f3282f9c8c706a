//! The VM suite: a Linux guest (Debian's kernel, a busybox initramfs built from Debian
//! packages by tests/vm/build-image.sh) whose disk damocles serves, attached the way a
//! hypervisor does it: QEMU's NBD driver on a Unix socket, as a virtio-blk disk.
//!
//! - `guest_ext4_on_raid5_survives_a_reboot`: the guest makes ext4 on a raid5, writes files
//!   and prints their checksums, powers off; the server is restarted; a second boot checks
//!   the filesystem (`e2fsck -fn`) and every checksum.
//! - `server_killed_and_restarted_under_a_writing_guest`: SIGKILL to `damocles serve` while
//!   the guest writes and syncs files; QEMU reconnects to the restarted server
//!   (`reconnect-delay`); the guest sees no I/O error and everything it synced verifies.
//! - `raid0_converted_to_raid5_under_a_guest_running_fio`: `add --grow` twice and
//!   `convert --level raid5` while the guest runs fio with verification, then a member
//!   fails and the guest verifies everything again.
//! - `server_killed_mid_conversion_under_a_writing_guest`: the same SIGKILL in the middle
//!   of a raid0 -> raid5 conversion; the restarted server resumes and finishes it, and the
//!   guest's writes, before, during and after the outage, verify.
//! - `host_power_cut_mid_conversion_then_the_guest_boots_clean`: QEMU and `damocles serve`
//!   both SIGKILLed in the middle of a raid0 -> raid5 conversion while the guest writes;
//!   the restarted server finishes the conversion, the guest boots again, `e2fsck -fn` is
//!   clean and every file it had synced verifies.
//! - `root_boot::guest_boots_from_a_damocles_root_after_a_conversion_and_a_rebuild`: the
//!   guest's root filesystem on a damocles volume (`root=/dev/vda`, checked and mounted by
//!   the initramfs, `switch_root`), booted after a raid0 -> raid5 conversion and after a
//!   member failed and a spare was rebuilt.
//! - `kernel_nbd_client_in_the_guest_on_a_damocles_it_serves`: damocles inside the guest on
//!   its loopback, the guest kernel's `nbd-client -C 4` on /dev/nbd0, ext4 + fio verify,
//!   a member failed and a spare rebuilt underneath.
//!
//! One VM at a time. The accelerator (KVM if a probe boot works, else TCG) is printed.

#[path = "vm/guest.rs"]
mod guest;
mod interop_support;
#[path = "vm/root_boot.rs"]
mod root_boot;

use guest::{limit, sums, NbdDisk, Vm};
use interop_support::*;
use std::time::{Duration, Instant};

/// Every tool the suite runs on the host (the guest's come from the image).
fn vm_ready(test: &str) -> bool {
    require_tools(
        test,
        &[
            "qemu-system-x86_64",
            "apt-get",
            "apt-cache",
            "dpkg-deb",
            "cpio",
            "gzip",
            "xz",
            "depmod",
            "readelf",
        ],
    )
}

fn log(t0: Instant, test: &str, what: &str) {
    eprintln!(
        "vm {test} [{}]: {what} ({:.1} s)",
        guest::accel(),
        t0.elapsed().as_secs_f64()
    );
}

/// Shell lines that write `n` files of pseudo-random data under DIR and print their sums.
fn write_files(dir: &str, n: u32, kib: u32) -> String {
    format!(
        r#"mkdir -p {dir}
i=0
while [ $i -lt {n} ]; do
    dd if=/dev/urandom of={dir}/f$i bs=1k count=$(( {kib} + i * 37 )) 2>/dev/null || fail "dd f$i"
    i=$((i + 1))
done
sync
(cd {dir} && sha256sum f*) | sed 's|  |  {dir}/|; s|^|SUM |'
"#
    )
}

/// Adds two 256 MiB members (m2, m3) to the served raid0 of `rig` and starts a
/// conversion to raid5 at 10 MiB/s; returns once a quarter of it is done, with the new
/// members and the chunks (left, at the start) to move. `before` names what must come
/// while it still runs.
fn convert_slowly_to_raid5(rig: &Rig, before: &str) -> (Vec<std::path::PathBuf>, u64, u64) {
    let new: Vec<_> = (2..4)
        .map(|i| rig.spare(&format!("m{i}.img"), 256 * MIB))
        .collect();
    rig.add_grow(&new[0]);
    rig.add_grow(&new[1]);
    run_ok(rig.cmd().args([
        "convert",
        "--level",
        "raid5",
        "--background",
        "--rate",
        "10M",
    ]));
    let to_move0 = rig.status()["chunks_to_move"].as_u64().unwrap();
    let st = rig.wait_status("a quarter of the conversion", limit(60), |s| {
        s["chunks_to_move"].as_u64().unwrap_or(0) * 4 <= to_move0 * 3
    });
    let left = st["chunks_to_move"].as_u64().unwrap();
    assert!(
        left > 0 && st["reshape"]["running"] == true,
        "the conversion ended before the {before}: lower the rate\n{st:#}"
    );
    (new, left, to_move0)
}

/// Shell lines that check every file in /tmp/sums (caches dropped before) and print one
/// `CHECK PATH: OK|FAILED` line per file, for [`judge_checks`].
const CHECK_SUMS: &str = r#"sha256sum -c /tmp/sums 2>&1 | sed 's/^/CHECK /'
echo "checked $(wc -l < /tmp/sums) files""#;

/// The file the guest's writer was writing when the server was killed: the one after the
/// last `DONE PATH` line on the console (read a moment after the kill, when nothing more
/// can complete). Its writes that the killed server had acknowledged but not yet flushed
/// lived only in that process's memory.
fn in_flight_at_kill(vm: &Vm) -> String {
    std::thread::sleep(Duration::from_millis(300));
    let con = vm.console();
    let last = con
        .lines()
        .filter_map(|l| l.trim().strip_prefix("DONE /mnt/w/f"))
        .filter_map(|n| n.trim().parse::<u32>().ok())
        .max();
    format!("/mnt/w/f{}", last.map_or(0, |n| n + 1))
}

/// Every file checked must verify — also the one in flight at the kill: the killed
/// server's acknowledged writes that it had not committed were in its write log (tmpfs),
/// replayed by the restarted server before it answered the guest's FLUSH (QEMU does not
/// send acknowledged writes again). Before the write log this file was a known gap.
fn judge_checks(test: &str, con: &str, in_flight: &str) {
    let mut bad = Vec::new();
    let mut n = 0;
    for l in con.lines().filter_map(|l| l.trim().strip_prefix("CHECK ")) {
        n += 1;
        let Some((path, verdict)) = l.rsplit_once(": ") else {
            bad.push(l.to_string());
            continue;
        };
        if verdict.trim() == "OK" {
            continue;
        }
        if path == in_flight {
            bad.push(format!("{l} (in flight at the kill)"));
            continue;
        }
        bad.push(l.to_string());
    }
    assert!(n > 0, "vm {test}: no CHECK lines from the guest\n{con}");
    assert!(
        bad.is_empty(),
        "vm {test}: files flushed after the kill do not verify: {bad:?}\n{con}"
    );
}

/// Shell lines that check the sums the host passes back (from an earlier boot or step).
fn check_sums(sums: &str) -> String {
    format!(
        "echo 3 > /proc/sys/vm/drop_caches\ncat > /tmp/sums <<'EOF'\n{sums}EOF\n\
         sha256sum -c -s /tmp/sums || {{ sha256sum -c /tmp/sums; fail \"checksums differ\"; }}\n\
         echo \"checked $(wc -l < /tmp/sums) files\"\n"
    )
}

const NO_IO_ERRORS: &str = r#"if dmesg | grep -i -E 'I/O error|EXT4-fs error|Buffer I/O|blk_update_request'; then
    fail "the kernel logged I/O errors"
fi
"#;

#[test]
fn guest_ext4_on_raid5_survives_a_reboot() {
    let test = "raid5-reboot";
    if !vm_ready(test) {
        return;
    }
    let _one = guest::serial();
    let t0 = Instant::now();
    let rig = Rig::create("raid5", "vmdisk", 4, 128 * MIB);
    let sock = rig.path("a.nbd");
    let srv = rig.serve(&rig.members, &[], "a");
    let first = format!(
        "mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 /dev/vda || fail mkfs\n\
         mount -t ext4 /dev/vda /mnt || fail mount\n{}umount /mnt || fail umount\n{NO_IO_ERRORS}",
        write_files("/mnt/data", 16, 512)
    );
    let mut vm = Vm::boot(
        rig.dir.path(),
        "boot1",
        &first,
        &[NbdDisk { socket: &sock }],
    );
    let con = vm.pass(limit(60));
    let sums = sums(&con);
    log(
        t0,
        test,
        &format!(
            "first boot: ext4 made, {} files written",
            sums.lines().count()
        ),
    );
    drop(vm);

    // The storage restarts between the boots: the data must be on the members.
    srv.stop();
    let _srv = rig.serve(&rig.members, &[], "a");
    let second = format!(
        "e2fsck -fn /dev/vda || fail \"e2fsck found problems\"\n\
         mount -t ext4 /dev/vda /mnt || fail mount\n{}umount /mnt\n{NO_IO_ERRORS}",
        check_sums(&sums)
    );
    let mut vm = Vm::boot(
        rig.dir.path(),
        "boot2",
        &second,
        &[NbdDisk { socket: &sock }],
    );
    let con = vm.pass(limit(60));
    assert!(con.contains("checked 16 files"), "{con}");
    log(
        t0,
        test,
        "second boot: e2fsck clean, every checksum matches",
    );
}

#[test]
fn server_killed_and_restarted_under_a_writing_guest() {
    let test = "storage-restart";
    if !vm_ready(test) {
        return;
    }
    let _one = guest::serial();
    let t0 = Instant::now();
    let rig = Rig::create("raid5", "vmdisk", 4, 128 * MIB);
    let sock = rig.path("a.nbd");
    let srv = rig.serve(&rig.members, &[], "a");
    // Each file is written with conv=fsync (a FLUSH to the server), and its sum is taken
    // from the page cache: what the guest wrote. After the restart the caches are dropped
    // and every file is read back through the new server.
    let scenario = format!(
        r#"mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 /dev/vda || fail mkfs
mount -t ext4 /dev/vda /mnt || fail mount
mkdir /mnt/w
step WRITING
i=0
while [ $i -lt 48 ]; do
    dd if=/dev/urandom of=/mnt/w/f$i bs=64k count=16 conv=fsync 2>/dev/null || fail "dd f$i: I/O error"
    sha256sum /mnt/w/f$i >> /tmp/sums
    echo "DONE /mnt/w/f$i"
    i=$((i + 1))
done
sync || fail sync
step WROTE
wait_host restarted
echo 3 > /proc/sys/vm/drop_caches
{CHECK_SUMS}
umount /mnt || fail umount
e2fsck -fn /dev/vda || fail "e2fsck found problems"
{NO_IO_ERRORS}"#
    );
    let mut vm = Vm::boot(
        rig.dir.path(),
        "writer",
        &scenario,
        &[NbdDisk { socket: &sock }],
    );
    vm.step("WRITING", limit(60));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !vm.console().contains("STEP WROTE"),
        "the guest finished writing before the kill: write more\n{}",
        vm.console()
    );
    // SAFETY: plain syscall on our own child, not reaped yet (Server reaps it on drop).
    let r = unsafe { libc::kill(srv.pid(), libc::SIGKILL) };
    assert_eq!(r, 0, "kill -KILL {}", srv.pid());
    drop(srv);
    let in_flight = in_flight_at_kill(&vm);
    log(
        t0,
        test,
        &format!("damocles serve killed with SIGKILL while the guest writes {in_flight}"),
    );
    std::thread::sleep(Duration::from_secs(2));
    let _srv = rig.serve(&rig.members, &[], "a");
    log(t0, test, "damocles serve restarted on the same socket");
    vm.step("WROTE", limit(60));
    vm.send("restarted");
    let con = vm.pass(limit(60));
    assert!(con.contains("checked 48 files"), "{con}");
    judge_checks(test, &con, &in_flight);
    log(
        t0,
        test,
        "no I/O error in the guest; 48 synced files verify; e2fsck clean",
    );
}

#[test]
fn raid0_converted_to_raid5_under_a_guest_running_fio() {
    let test = "migration";
    if !vm_ready(test) {
        return;
    }
    let _one = guest::serial();
    let t0 = Instant::now();
    let rig = Rig::create("raid0", "vmdisk", 2, 256 * MIB);
    let sock = rig.path("a.nbd");
    let _srv = rig.serve(&rig.members, &[], "a");
    let fio = "fio --name=mig --filename=/mnt/fio.dat --size=24M --bs=64k --rw=write \
               --ioengine=psync --direct=1 --verify=crc32c --verify_fatal=1";
    let scenario = format!(
        r#"mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 /dev/vda || fail mkfs
mount -t ext4 /dev/vda /mnt || fail mount
{files}
(cd /mnt/data && sha256sum f*) | sed 's|  |  /mnt/data/|' > /tmp/sums
(
    n=0
    while [ ! -e /tmp/stop ]; do
        {fio} > /tmp/fio.out 2>&1 || {{ cat /tmp/fio.out; touch /tmp/fiofail; break; }}
        n=$((n + 1))
        echo $n > /tmp/fioruns
    done
) &
fpid=$!
step FIO
wait_host converted
touch /tmp/stop
wait $fpid
[ -e /tmp/fiofail ] && fail "fio verify failed during the conversion"
echo "fio write+verify runs during the conversion: $(cat /tmp/fioruns)"
echo 3 > /proc/sys/vm/drop_caches
sha256sum -c -s /tmp/sums || {{ sha256sum -c /tmp/sums; fail "checksums differ after the conversion"; }}
step CONVERTED-OK
wait_host failed
echo 3 > /proc/sys/vm/drop_caches
sha256sum -c -s /tmp/sums || {{ sha256sum -c /tmp/sums; fail "checksums differ degraded"; }}
{fio} --verify_only > /tmp/fio.out 2>&1 || {{ cat /tmp/fio.out; fail "fio verify failed degraded"; }}
echo "degraded: files and fio data verify"
umount /mnt || fail umount
e2fsck -fn /dev/vda || fail "e2fsck found problems"
{NO_IO_ERRORS}"#,
        files = write_files("/mnt/data", 8, 2048)
    );
    let mut vm = Vm::boot(
        rig.dir.path(),
        "fio",
        &scenario,
        &[NbdDisk { socket: &sock }],
    );
    vm.step("FIO", limit(90));
    log(
        t0,
        test,
        "guest data written; fio with verification running",
    );

    let new: Vec<_> = (2..4)
        .map(|i| rig.spare(&format!("m{i}.img"), 256 * MIB))
        .collect();
    assert_eq!(rig.add_grow(&new[0]), 2);
    assert_eq!(rig.add_grow(&new[1]), 3);
    let out = run_ok(rig.cmd().args([
        "convert",
        "--level",
        "raid5",
        "--background",
        "--rate",
        "20M",
    ]));
    log(
        t0,
        test,
        &format!("convert: {}", out.trim().replace('\n', " / ")),
    );
    let st = rig.status();
    assert_eq!(st["level"], "raid5", "{st:#}");
    assert_eq!(st["reshape"]["running"], true, "{st:#}");
    let st = rig.wait_status("the conversion under the guest", limit(60), |s| {
        s["reshape"]["running"] != true && s["chunks_to_move"] == 0
    });
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["tolerance"], 1, "{st:#}");
    assert!(
        !vm.console().contains("DAMOCLES-VM: FAIL"),
        "{}",
        vm.console()
    );
    log(
        t0,
        test,
        &format!("converted to raid5 ({} bytes moved)", st["reshape"]["done"]),
    );
    vm.send("converted");
    vm.step("CONVERTED-OK", limit(90));
    rig.fail(0);
    let st = rig.status();
    assert_eq!(st["health"], "degraded", "{st:#}");
    vm.send("failed");
    let con = vm.pass(limit(90));
    assert!(con.contains("degraded: files and fio data verify"), "{con}");
    let runs = con
        .lines()
        .find(|l| l.starts_with("fio write+verify runs"))
        .unwrap_or("");
    log(
        t0,
        test,
        &format!("member 0 failed; guest verified everything ({runs})"),
    );
}

#[test]
fn server_killed_mid_conversion_under_a_writing_guest() {
    let test = "kill-mid-convert";
    if !vm_ready(test) {
        return;
    }
    let _one = guest::serial();
    let t0 = Instant::now();
    let rig = Rig::create("raid0", "vmdisk", 2, 256 * MIB);
    let sock = rig.path("a.nbd");
    let srv = rig.serve(&rig.members, &[], "a");
    // A writer in the background: each file written with conv=fsync (a FLUSH the server
    // must have made durable), its sum taken after that, until the host says the
    // conversion is over. The files from before the kill, from the outage (held by QEMU's
    // reconnect-delay) and from after it must all verify, caches dropped.
    let scenario = format!(
        r#"mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 /dev/vda || fail mkfs
mount -t ext4 /dev/vda /mnt || fail mount
{files}(cd /mnt/data && sha256sum f*) | sed 's|  |  /mnt/data/|' > /tmp/sums
mkdir /mnt/w
(
    i=0
    while [ ! -e /tmp/stop ]; do
        dd if=/dev/urandom of=/mnt/w/f$i bs=64k count=8 conv=fsync 2>/dev/null || {{ echo "dd f$i: I/O error"; touch /tmp/ddfail; break; }}
        sha256sum /mnt/w/f$i >> /tmp/sums
        echo "DONE /mnt/w/f$i"
        i=$((i + 1))
    done
) &
wpid=$!
step WRITING
wait_host killed
k=$(wc -l < /tmp/sums)
echo "files synced before the restart: $k"
wait_host converted
# Six more files through the restarted server after its conversion.
while [ $(wc -l < /tmp/sums) -lt $((k + 6)) ] && [ ! -e /tmp/ddfail ]; do sleep 0.2; done
touch /tmp/stop
wait $wpid
[ -e /tmp/ddfail ] && fail "a write failed across the kill"
sync || fail sync
echo 3 > /proc/sys/vm/drop_caches
{CHECK_SUMS}
umount /mnt || fail umount
e2fsck -fn /dev/vda || fail "e2fsck found problems"
{NO_IO_ERRORS}"#,
        files = write_files("/mnt/data", 8, 2048)
    );
    let mut vm = Vm::boot(
        rig.dir.path(),
        "killconv",
        &scenario,
        &[NbdDisk { socket: &sock }],
    );
    vm.step("WRITING", limit(90));
    let (new, left, to_move0) = convert_slowly_to_raid5(&rig, "kill");
    // SAFETY: plain syscall on our own child, not reaped yet (Server reaps it on drop).
    let r = unsafe { libc::kill(srv.pid(), libc::SIGKILL) };
    assert_eq!(r, 0, "kill -KILL {}", srv.pid());
    drop(srv);
    let in_flight = in_flight_at_kill(&vm);
    log(
        t0,
        test,
        &format!("damocles serve SIGKILLed with {left} of {to_move0} chunks to move; {in_flight}"),
    );
    std::thread::sleep(Duration::from_secs(2));
    let all: Vec<_> = rig.members.iter().chain(&new).cloned().collect();
    let _srv = rig.serve(&all, &[], "a");
    vm.send("killed");
    let st = rig.status();
    assert_eq!(st["level"], "raid5", "{st:#}");
    let st = rig.wait_status("the conversion to resume and finish", limit(60), |s| {
        s["reshape"].is_object() && s["reshape"]["running"] != true && s["chunks_to_move"] == 0
    });
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["tolerance"], 1, "{st:#}");
    log(
        t0,
        test,
        "restarted on the 4 members: the conversion resumed and finished under the guest",
    );
    vm.send("converted");
    let con = vm.pass(limit(90));
    judge_checks(test, &con, &in_flight);
    let before: usize = con
        .lines()
        .find_map(|l| l.strip_prefix("files synced before the restart: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count before the restart\n{con}"));
    let total: usize = con
        .lines()
        .find_map(|l| l.strip_prefix("checked "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no final check\n{con}"));
    assert!(
        total >= before + 6 && before > 8,
        "the guest must have written before and after the restart ({before} then {total})\n{con}"
    );
    log(
        t0,
        test,
        &format!(
            "no I/O error; {total} synced files verify ({before} before the restart); e2fsck clean"
        ),
    );
}

#[test]
fn host_power_cut_mid_conversion_then_the_guest_boots_clean() {
    let test = "power-cut";
    if !vm_ready(test) {
        return;
    }
    let _one = guest::serial();
    let t0 = Instant::now();
    let rig = Rig::create("raid0", "vmdisk", 2, 256 * MIB);
    let sock = rig.path("a.nbd");
    let srv = rig.serve(&rig.members, &[], "a");
    // Every SUM line is printed after its file's fsync returned: those files must survive.
    let scenario = format!(
        r#"mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 /dev/vda || fail mkfs
mount -t ext4 /dev/vda /mnt || fail mount
{files}mkdir /mnt/late
step READY
i=0
while true; do
    dd if=/dev/urandom of=/mnt/late/f$i bs=64k count=8 conv=fsync 2>/dev/null || fail "dd f$i"
    echo "SUM $(sha256sum /mnt/late/f$i)"
    i=$((i + 1))
done
"#,
        files = write_files("/mnt/data", 8, 2048)
    );
    let mut vm = Vm::boot(
        rig.dir.path(),
        "cut",
        &scenario,
        &[NbdDisk { socket: &sock }],
    );
    vm.step("READY", limit(90));
    let (new, left, to_move0) = convert_slowly_to_raid5(&rig, "cut");
    // The power cut: both processes at once, SIGKILL.
    vm.kill();
    // SAFETY: plain syscall on our own child, not reaped yet (Server reaps it on drop).
    let r = unsafe { libc::kill(srv.pid(), libc::SIGKILL) };
    assert_eq!(r, 0, "kill -KILL {}", srv.pid());
    drop(srv);
    let sums = sums(&vm.console());
    drop(vm);
    log(
        t0,
        test,
        &format!(
            "power cut with {left} of {to_move0} chunks to move; {} files synced before it",
            sums.lines().count()
        ),
    );

    let all: Vec<_> = rig.members.iter().chain(&new).cloned().collect();
    let _srv = rig.serve(&all, &[], "a");
    let st = rig.wait_status("the conversion to resume and finish", limit(60), |s| {
        s["reshape"].is_object() && s["reshape"]["running"] != true && s["chunks_to_move"] == 0
    });
    assert_eq!(st["level"], "raid5", "{st:#}");
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["tolerance"], 1, "{st:#}");
    log(t0, test, "restarted: the conversion resumed and finished");
    // Mounting replays ext4's journal (what a boot does); the check comes after it.
    let second = format!(
        "mount -t ext4 /dev/vda /mnt || fail \"mount after the power cut\"\n\
         umount /mnt || fail umount\n\
         e2fsck -fn /dev/vda || fail \"e2fsck found problems\"\n\
         mount -t ext4 /dev/vda /mnt || fail mount\n{}umount /mnt\n{NO_IO_ERRORS}",
        check_sums(&sums)
    );
    let mut vm = Vm::boot(
        rig.dir.path(),
        "after",
        &second,
        &[NbdDisk { socket: &sock }],
    );
    let con = vm.pass(limit(60));
    assert!(
        con.contains(&format!("checked {} files", sums.lines().count())),
        "{con}"
    );
    log(
        t0,
        test,
        "the guest booted again: e2fsck clean, every synced file verifies",
    );
}

#[test]
fn kernel_nbd_client_in_the_guest_on_a_damocles_it_serves() {
    let test = "kernel-nbd";
    if !vm_ready(test) || !require_tools(test, &["strip"]) {
        return;
    }
    let _one = guest::serial();
    let t0 = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("damocles-vm.")
        .tempdir()
        .unwrap();
    // damocles runs inside the guest, on its loopback, over members in its tmpfs; the
    // guest's kernel nbd client attaches /dev/nbd0 with 4 connections.
    let fio = "fio --name=k --filename=/mnt/k.dat --size=24M --bs=64k --rw=write \
               --ioengine=psync --direct=1 --verify=crc32c --verify_fatal=1";
    let scenario = format!(
        r#"export XDG_RUNTIME_DIR=/run
ip link set lo up || fail "lo up"
for i in 0 1 2 3; do truncate -s 96M /tmp/m$i.img || fail truncate; done
damocles create --sparse --level raid5 --name g /tmp/m0.img /tmp/m1.img /tmp/m2.img /tmp/m3.img || fail create
damocles serve --listen 127.0.0.1:10809 /tmp/m0.img /tmp/m1.img /tmp/m2.img /tmp/m3.img > /tmp/serve.out 2>&1 &
n=0
until grep -q '^serving ' /tmp/serve.out; do
    n=$((n + 1)); [ $n -gt 60 ] && {{ cat /tmp/serve.out; fail "damocles serve did not start"; }}
    sleep 1
done
nbd-client 127.0.0.1 10809 /dev/nbd0 -N g -C 4 || fail "nbd-client -C 4"
mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 /dev/nbd0 || fail mkfs
mount -t ext4 /dev/nbd0 /mnt || fail mount
{fio} > /tmp/fio.out 2>&1 || {{ cat /tmp/fio.out; fail "fio on /dev/nbd0"; }}
step FIO-OK
damocles fail 1 || fail "damocles fail 1"
damocles status --json | tr -d ' \n' | grep -q '"health":"degraded"' || {{ damocles status; fail "not degraded after fail 1"; }}
echo 3 > /proc/sys/vm/drop_caches
{fio} --verify_only > /tmp/fio.out 2>&1 || {{ cat /tmp/fio.out; fail "fio verify degraded"; }}
truncate -s 96M /tmp/s.img
damocles add /tmp/s.img || fail "damocles add"
n=0
until damocles status --json | tr -d ' \n' | grep -q '"health":"ok"'; do
    n=$((n + 1)); [ $n -gt 120 ] && {{ damocles status; fail "no rebuild to health ok"; }}
    sleep 1
done
damocles status | sed 's/^/status: /'
echo 3 > /proc/sys/vm/drop_caches
{fio} --verify_only > /tmp/fio.out 2>&1 || {{ cat /tmp/fio.out; fail "fio verify after the rebuild"; }}
umount /mnt || fail umount
e2fsck -fn /dev/nbd0 || fail "e2fsck found problems"
nbd-client -d /dev/nbd0 || fail "nbd-client -d"
echo "kernel nbd: fio verifies clean, degraded and rebuilt"
{NO_IO_ERRORS}"#
    );
    let mut vm = Vm::boot_with_damocles(dir.path(), "knbd", &scenario);
    vm.step("FIO-OK", limit(120));
    log(
        t0,
        test,
        "ext4 + fio verify on the guest's /dev/nbd0 (-C 4)",
    );
    let con = vm.pass(limit(120));
    assert!(
        con.contains("kernel nbd: fio verifies clean, degraded and rebuilt"),
        "{con}"
    );
    let status: Vec<&str> = con
        .lines()
        .filter_map(|l| l.strip_prefix("status: "))
        .filter(|l| l.contains("health") || l.contains("rebuild"))
        .collect();
    assert!(!status.is_empty(), "{con}");
    let what = format!(
        "member failed and rebuilt underneath: fio verifies, e2fsck clean ({})",
        status.join(" / ")
    );
    log(t0, test, &what);
}
