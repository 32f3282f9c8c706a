//! The VM suite's guest: the image (built by build-image.sh from Debian packages, cached
//! under target/vm-image/), the accelerator probe (KVM with a short boot, else TCG), and a
//! booted QEMU with damocles volumes attached through QEMU's NBD driver as virtio disks.
//!
//! The guest runs a shell scenario (appended to the initramfs as a second cpio archive) and
//! reports on its first serial port, which QEMU writes to a file: `DAMOCLES-VM: STEP NAME`
//! lines mark its progress, `DAMOCLES-VM: PASS` or `DAMOCLES-VM: FAIL ...` its result. The
//! host answers on the second serial port (a Unix socket), which the scenario reads with
//! `wait_host NAME`. Every QEMU is killed by its pid when a wait runs over its limit or the
//! test panics.

use crate::interop_support::{run_timeout, text};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub const PASS: &str = "DAMOCLES-VM: PASS";
pub const FAIL: &str = "DAMOCLES-VM: FAIL";
/// Longest wait for a KVM probe boot to print its result.
const KVM_PROBE: Duration = Duration::from_secs(20);

pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// One VM at a time in this test binary: the machine has 2 cores and TCG is CPU-bound.
pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm")
}

/// Builds (or finds in the cache) the guest image; panics with the builder's output.
pub fn image() -> &'static Image {
    static IMG: OnceLock<Image> = OnceLock::new();
    IMG.get_or_init(|| {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../vm-image");
        let t0 = Instant::now();
        let o = run_timeout(
            Command::new("bash")
                .arg(script_dir().join("build-image.sh"))
                .arg(&cache),
            Duration::from_secs(900),
        );
        assert!(o.status.success(), "build-image.sh failed\n{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        let dir = PathBuf::from(out.lines().last().unwrap_or("").trim());
        eprintln!(
            "vm: guest image {} ({:.1} s)",
            dir.display(),
            t0.elapsed().as_secs_f64()
        );
        Image {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
        }
    })
}

/// The accelerator: `kvm` when a probe boot under KVM prints its result within 20 s (a
/// guest can hang at boot under nested virtualisation), else `tcg`. DAMOCLES_VM_ACCEL
/// forces one.
pub fn accel() -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| {
        let forced = std::env::var("DAMOCLES_VM_ACCEL").ok();
        let (a, why) = match forced.as_deref() {
            Some("kvm") => ("kvm", "forced by DAMOCLES_VM_ACCEL".to_string()),
            Some("tcg") => ("tcg", "forced by DAMOCLES_VM_ACCEL".to_string()),
            _ => probe_kvm(),
        };
        eprintln!("vm: accelerator {a} ({why})");
        // For the end of `.ci/test`: which accelerator the VM suite ran under, and why.
        let note = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../vm-accel.txt");
        let _ = std::fs::write(note, format!("{a} ({why})\n"));
        a
    })
}

/// KVM when /dev/kvm opens and a probe boot prints its result in time, else TCG. With CI
/// set, a /dev/kvm that cannot be opened fails the test (CI machines have KVM; a missing
/// one is a broken runner, not a reason to run 6 times slower unnoticed); a KVM that hangs
/// still falls back to TCG, and says so.
fn probe_kvm() -> (&'static str, String) {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        let why = format!("/dev/kvm cannot be opened: {e}");
        if std::env::var_os("CI").is_some() {
            panic!(
                "vm: {why}; CI is set, so this is a failure (set DAMOCLES_VM_ACCEL=tcg to \
                 run under TCG on purpose)"
            );
        }
        eprintln!("vm: {why}; using TCG");
        return ("tcg", why);
    }
    let dir = tempfile::Builder::new()
        .prefix("damocles-vm-probe.")
        .tempdir()
        .unwrap();
    let t0 = Instant::now();
    let mut vm = Vm::boot_with(dir.path(), "probe", "true\n", &[], "kvm", "");
    match vm.wait_for(PASS, KVM_PROBE) {
        Ok(_) => {
            eprintln!(
                "vm: KVM probe booted in {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            vm.wait_exit(Duration::from_secs(10));
            ("kvm", "a probe boot worked".to_string())
        }
        Err(why) => {
            eprintln!("vm: KVM probe failed ({why}); falling back to TCG");
            vm.kill();
            ("tcg", format!("KVM probe boot failed: {why}"))
        }
    }
}

/// A disk of the guest: a damocles export on a Unix socket, attached with QEMU's NBD
/// driver (which reconnects for `reconnect-delay` seconds when the server goes away).
pub struct NbdDisk<'a> {
    pub socket: &'a Path,
}

pub struct Vm {
    child: Option<Child>,
    pub serial: PathBuf,
    ctl_path: PathBuf,
    ctl: Option<UnixStream>,
    name: String,
}

/// Time limits scale with the accelerator: TCG is 5-10 times slower.
pub fn limit(kvm_secs: u64) -> Duration {
    let f = if accel() == "kvm" { 1 } else { 6 };
    Duration::from_secs(kvm_secs * f)
}

impl Vm {
    pub fn boot(dir: &Path, name: &str, scenario: &str, disks: &[NbdDisk]) -> Vm {
        Vm::boot_with(dir, name, scenario, disks, accel(), "")
    }

    /// Like `boot` with `root=/dev/vda` on the kernel command line: the initramfs checks the
    /// first disk's filesystem (`e2fsck -fn`), mounts it read-only and `switch_root`s to its
    /// `/init`, which runs `scenario` from `/run` (see tests/vm/init).
    pub fn boot_root(dir: &Path, name: &str, scenario: &str, disks: &[NbdDisk]) -> Vm {
        Vm::boot_with(dir, name, scenario, disks, accel(), " root=/dev/vda")
    }

    /// Like `boot`, with this build's `damocles` binary (stripped) at /bin/damocles in the
    /// guest: the image's glibc is Debian's, as on the host it was built on.
    pub fn boot_with_damocles(dir: &Path, name: &str, scenario: &str) -> Vm {
        let scn = dir.join(format!("{name}.scn"));
        std::fs::create_dir_all(scn.join("bin")).unwrap();
        let o = crate::interop_support::run(
            Command::new("strip")
                .arg("-o")
                .arg(scn.join("bin/damocles"))
                .arg(crate::interop_support::bin()),
        );
        assert!(o.status.success(), "strip damocles: {}", text(&o));
        Vm::boot_with(dir, name, scenario, &[], accel(), "")
    }

    fn boot_with(
        dir: &Path,
        name: &str,
        scenario: &str,
        disks: &[NbdDisk],
        accel: &str,
        cmdline: &str,
    ) -> Vm {
        let img = image();
        let initrd = dir.join(format!("{name}.initrd"));
        write_initrd(
            &img.initrd,
            scenario,
            &dir.join(format!("{name}.scn")),
            &initrd,
        );
        let serial = dir.join(format!("{name}.serial"));
        let ctl_path = dir.join(format!("{name}.ctl"));
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-accel", accel, "-m", "768", "-smp", "2", "-nic", "none"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(&img.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 quiet panic=-1{cmdline}"))
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-chardev")
            .arg(format!(
                "socket,id=ctl,path={},server=on,wait=off",
                ctl_path.display()
            ))
            .args(["-serial", "chardev:ctl"]);
        for (i, d) in disks.iter().enumerate() {
            c.arg("-blockdev").arg(format!(
                "{{\"driver\":\"nbd\",\"node-name\":\"nbd{i}\",\"server\":{{\"type\":\"unix\",\
                 \"path\":\"{}\"}},\"reconnect-delay\":60}}",
                d.socket.display()
            ));
            c.arg("-device")
                .arg(format!("virtio-blk-pci,drive=nbd{i},serial=damocles{i}"));
        }
        let stderr = std::fs::File::create(dir.join(format!("{name}.qemu.stderr"))).unwrap();
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn qemu-system-x86_64");
        Vm {
            child: Some(child),
            serial,
            ctl_path,
            ctl: None,
            name: name.to_string(),
        }
    }

    /// What the guest printed so far (lines, without the kernel's).
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        c.try_wait().unwrap().map(|s| s.to_string())
    }

    /// Waits until a console line starts with `prefix`; Err when the guest reports FAIL,
    /// QEMU exits first, or `limit` passes.
    pub fn wait_for(&mut self, prefix: &str, limit: Duration) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let con = self.console();
            if let Some(l) = con.lines().find(|l| l.starts_with(prefix)) {
                return Ok(l.to_string());
            }
            if con.contains(FAIL) {
                return Err("the guest reported FAIL".into());
            }
            if let Some(s) = self.exited() {
                return Err(format!("QEMU exited ({s}) before {prefix:?}"));
            }
            if start.elapsed() > limit {
                return Err(format!("no {prefix:?} within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Like `wait_for`, but a failure panics with the console and QEMU's stderr.
    pub fn expect(&mut self, prefix: &str, limit: Duration) -> String {
        match self.wait_for(prefix, limit) {
            Ok(l) => l,
            Err(why) => {
                self.kill();
                panic!("vm {}: {why}\n{}", self.name, self.report());
            }
        }
    }

    pub fn step(&mut self, name: &str, limit: Duration) {
        self.expect(&format!("DAMOCLES-VM: STEP {name}"), limit);
    }

    fn report(&self) -> String {
        let qerr =
            std::fs::read_to_string(self.serial.with_extension("qemu.stderr")).unwrap_or_default();
        format!(
            "--- console ---\n{}\n--- qemu stderr ---\n{qerr}",
            self.console()
        )
    }

    /// Sends one line to the guest's `wait_host`.
    pub fn send(&mut self, line: &str) {
        if self.ctl.is_none() {
            self.ctl = Some(
                UnixStream::connect(&self.ctl_path)
                    .unwrap_or_else(|e| panic!("connecting {}: {e}", self.ctl_path.display())),
            );
        }
        let s = self.ctl.as_mut().unwrap();
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        s.flush().unwrap();
    }

    /// Waits for PASS and QEMU's exit (the guest powers off); returns the console.
    pub fn pass(&mut self, limit: Duration) -> String {
        self.expect(PASS, limit);
        self.wait_exit(Duration::from_secs(30));
        self.console()
    }

    pub fn wait_exit(&mut self, limit: Duration) {
        let start = Instant::now();
        while self.exited().is_none() {
            if start.elapsed() > limit {
                self.kill();
                panic!(
                    "vm {}: QEMU did not exit after the guest's poweroff\n{}",
                    self.name,
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = None;
    }

    /// SIGKILL to this QEMU (by its pid) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
            if std::thread::panicking() {
                eprintln!("vm {} killed:\n{}", self.name, self.report());
            }
        }
    }
}

/// The image's initramfs with a second cpio archive holding /scenario.sh (the kernel
/// unpacks concatenated archives in order).
fn write_initrd(base: &Path, scenario: &str, scn_dir: &Path, out: &Path) {
    std::fs::create_dir_all(scn_dir).unwrap();
    std::fs::write(scn_dir.join("scenario.sh"), scenario).unwrap();
    // Compressed like the base archive: the kernel takes a gzip segment after a gzip one.
    let o = Command::new("sh")
        .args([
            "-c",
            "find . -mindepth 1 | cpio -o -H newc --quiet | gzip -1",
        ])
        .current_dir(scn_dir)
        .stdin(Stdio::null())
        .output()
        .expect("spawn cpio | gzip");
    assert!(o.status.success(), "cpio | gzip failed: {o:?}");
    let mut img = std::fs::read(base).unwrap();
    img.extend_from_slice(&o.stdout);
    std::fs::write(out, img).unwrap();
}

/// The `SUM <sha256> <file>` lines a scenario printed, as `sha256sum -c` input.
pub fn sums(console: &str) -> String {
    let s: String = console
        .lines()
        .filter_map(|l| l.strip_prefix("SUM "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!s.is_empty(), "the guest printed no SUM lines:\n{console}");
    s
}
