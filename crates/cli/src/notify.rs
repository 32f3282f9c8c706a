//! systemd's notify protocol (sd_notify): READY=1, STATUS=..., WATCHDOG=1 and STOPPING=1
//! datagrams to $NOTIFY_SOCKET (a path, or an abstract socket written `@name`). Without
//! NOTIFY_SOCKET every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

pub struct Notifier {
    target: Option<Target>,
}

enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|s| {
            use std::os::unix::ffi::OsStrExt;
            let b = s.as_bytes();
            match b.first() {
                None => None,
                Some(b'@') => Some(Target::Abstract(b[1..].to_vec())),
                Some(_) => Some(Target::Path(PathBuf::from(s))),
            }
        });
        Notifier { target }
    }

    /// Sends `msg` (newline-separated `KEY=value` lines); a failure is logged once per call.
    pub fn send(&self, msg: &str) {
        let Some(t) = &self.target else {
            return;
        };
        let r = UnixDatagram::unbound().and_then(|s| match t {
            Target::Path(p) => s.send_to(msg.as_bytes(), p).map(|_| ()),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                s.send_to_addr(msg.as_bytes(), &addr).map(|_| ())
            }
        });
        if let Err(e) = r {
            tracing::warn!("notifying systemd (NOTIFY_SOCKET): {e}");
        }
    }

    /// How often systemd wants a WATCHDOG=1 (half its WATCHDOG_USEC), when it watches
    /// this process.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.parse::<u32>().ok()? != std::process::id() {
                return None;
            }
        }
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}
