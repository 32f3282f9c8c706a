//! The VM suite's boot-from-damocles scenario: the guest's root filesystem lives on a
//! damocles volume, and the guest boots from it (kernel and initramfs from the host, as a
//! direct-kernel boot does; `root=/dev/vda`, the initramfs checks and mounts it and
//! `switch_root`s) after a raid0 -> raid5 conversion and again after a rebuild.

use crate::guest::{self, limit, sums, NbdDisk, Vm};
use crate::interop_support::*;
use crate::{check_sums, log, vm_ready, write_files, NO_IO_ERRORS};
use std::time::Instant;

/// The first boot (from the initramfs): ext4 on /dev/vda holding a root filesystem
/// (busybox with its applets, the guest's /init, /etc) and data files; prints the sums of
/// the data and of the system files as they will be seen from the booted root.
fn make_root() -> String {
    format!(
        r#"mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 /dev/vda || fail mkfs
mount -t ext4 /dev/vda /mnt || fail mount
mkdir -p /mnt/proc /mnt/sys /mnt/dev /mnt/tmp /mnt/run /mnt/mnt /mnt/var || fail mkdir
cp -a /bin /etc /mnt/ || fail "cp /bin /etc"
cp /init /mnt/init || fail "cp /init"
touch /mnt/etc/damocles-rootfs
{files}sha256sum /mnt/bin/busybox /mnt/init | sed 's|  /mnt/|  /|; s|^|SUM |'
umount /mnt || fail umount
{NO_IO_ERRORS}"#,
        files = write_files("/mnt/data", 8, 1024)
    )
}

/// A boot from the damocles root: `/` must be /dev/vda (read-only, as the initramfs
/// mounted it), every sum must match; `extra` runs after that.
fn on_root(sums: &str, extra: &str) -> String {
    format!(
        r#"grep -q '^/dev/vda / ext4 ro' /proc/mounts || {{ cat /proc/mounts; fail "/ is not /dev/vda read-only"; }}
[ -e /etc/damocles-rootfs ] || fail "not on the damocles root"
echo "root: $(grep '^/dev/vda / ' /proc/mounts)"
{check}{extra}{NO_IO_ERRORS}"#,
        check = check_sums(sums)
    )
}

/// Writes a file on the booted root (remounted read-write, then read-only again so the
/// next boot's e2fsck finds it clean) and prints its sum.
const WRITE_ON_ROOT: &str = r#"mount -o remount,rw / || fail "remount rw"
dd if=/dev/urandom of=/var/boot2 bs=1k count=768 conv=fsync 2>/tmp/dd.err || { cat /tmp/dd.err; ls -la /var /dev | head; cat /proc/mounts; fail "dd /var/boot2"; }
echo "SUM $(sha256sum /var/boot2)"
sync
mount -o remount,ro / || fail "remount ro"
"#;

/// Boots from the root and checks the console shows the initramfs' e2fsck and the
/// switch to the damocles root.
fn boot_from_it(rig: &Rig, name: &str, scenario: &str) -> String {
    let sock = rig.path("a.nbd");
    let mut vm = Vm::boot_root(rig.dir.path(), name, scenario, &[NbdDisk { socket: &sock }]);
    let con = vm.pass(limit(60));
    assert!(
        con.contains("DAMOCLES-VM: INITRAMFS root=/dev/vda")
            && con.contains("init: e2fsck -fn /dev/vda clean")
            && con.contains("root: /dev/vda / ext4 ro"),
        "{con}"
    );
    con
}

#[test]
fn guest_boots_from_a_damocles_root_after_a_conversion_and_a_rebuild() {
    let test = "root-boot";
    if !vm_ready(test) {
        return;
    }
    let _one = guest::serial();
    let t0 = Instant::now();
    let rig = Rig::create("raid0", "vmroot", 2, 128 * MIB);
    let sock = rig.path("a.nbd");
    let _srv = rig.serve(&rig.members, &[], "a");
    let mut vm = Vm::boot(
        rig.dir.path(),
        "mkroot",
        &make_root(),
        &[NbdDisk { socket: &sock }],
    );
    let con = vm.pass(limit(60));
    drop(vm);
    let sums = sums(&con).replace("  /mnt/data/", "  /data/");
    assert_eq!(sums.lines().count(), 10, "{sums}");
    log(t0, test, "root filesystem made on a raid0 of 2 members");

    // raid0 -> raid5 under the powered-off guest's root, then a boot from it.
    let new: Vec<_> = (2..4)
        .map(|i| rig.spare(&format!("m{i}.img"), 128 * MIB))
        .collect();
    rig.add_grow(&new[0]);
    rig.add_grow(&new[1]);
    run_ok(
        rig.cmd()
            .args(["convert", "--level", "raid5", "--background"]),
    );
    let st = rig.wait_status("the conversion", limit(60), |s| {
        s["reshape"]["running"] != true && s["chunks_to_move"] == 0
    });
    assert_eq!(st["level"], "raid5", "{st:#}");
    assert_eq!(st["tolerance"], 1, "{st:#}");
    log(
        t0,
        test,
        &format!("converted to raid5 ({} bytes moved)", st["reshape"]["done"]),
    );
    let con = boot_from_it(&rig, "boot-converted", &on_root(&sums, WRITE_ON_ROOT));
    let sums = format!("{sums}{}", guest::sums(&con));
    log(
        t0,
        test,
        "booted from the raid5 root: e2fsck clean, files verify, /var/boot2 written",
    );

    // A member fails, a spare takes its place and is rebuilt; boot again.
    rig.fail(1);
    let spare = rig.spare("s.img", 128 * MIB);
    rig.add_spare(&spare);
    let st = rig.wait_rebuilds_idle();
    assert_eq!(st["health"], "ok", "{st:#}");
    assert!(st["rebuild"]["done"].as_u64().unwrap_or(0) > 0, "{st:#}");
    log(
        t0,
        test,
        &format!(
            "member 1 failed, spare rebuilt ({} bytes)",
            st["rebuild"]["done"]
        ),
    );
    let con = boot_from_it(&rig, "boot-rebuilt", &on_root(&sums, ""));
    assert!(con.contains("checked 11 files"), "{con}");
    log(
        t0,
        test,
        "booted from the rebuilt root: e2fsck clean, all 11 files verify",
    );
}
