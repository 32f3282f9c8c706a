//! The control socket: how commands reach an array that `damocles serve` is serving.
//!
//! Each server listens on `<dir>/<array-uuid>.sock`, where `<dir>` is
//! `$XDG_RUNTIME_DIR/damocles`, or `/run/damocles` without XDG_RUNTIME_DIR. Clients find an
//! array by name by asking every socket there who it is, so two arrays with one name, or
//! a renamed array, never point a command at the wrong server.

pub mod proto;
pub mod server;
pub mod volume;

use anyhow::{anyhow, bail, Context, Result};
use proto::{Request, Response};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where servers put their control sockets unless told otherwise.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("damocles"),
        _ => PathBuf::from("/run/damocles"),
    }
}

pub fn default_path(uuid: &str) -> PathBuf {
    default_dir().join(format!("{uuid}.sock"))
}

/// A connection to one server.
pub struct Client {
    path: PathBuf,
    timeout: Duration,
    reader: BufReader<UnixStream>,
    out: UnixStream,
}

impl Client {
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client> {
        let s = UnixStream::connect(path)
            .with_context(|| format!("control socket {}", path.display()))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Client {
            path: path.to_path_buf(),
            timeout,
            reader: BufReader::new(s.try_clone()?),
            out: s,
        })
    }

    /// Sends a request; a response with `ok: false` becomes an error with its message.
    pub fn call(&mut self, req: &Request) -> Result<Response> {
        let r = self.call_raw(req)?;
        if !r.ok {
            return Err(anyhow!(r
                .error
                .unwrap_or_else(|| "the server refused without a reason".into())));
        }
        Ok(r)
    }

    fn call_raw(&mut self, req: &Request) -> Result<Response> {
        let lost = || format!("the server at {} went away", self.path.display());
        let line = serde_json::to_string(req)?;
        writeln!(self.out, "{line}").with_context(lost)?;
        let mut resp = String::new();
        let n = match self.reader.read_line(&mut resp) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!(
                    "the server at {} did not answer within {} s",
                    self.path.display(),
                    self.timeout.as_secs_f64()
                )
            }
            r => r.with_context(lost)?,
        };
        if n == 0 {
            bail!("{}", lost());
        }
        serde_json::from_str(&resp).with_context(|| {
            format!(
                "the server at {} sent an unreadable answer",
                self.path.display()
            )
        })
    }
}

/// A server found in the socket directory.
pub struct Served {
    pub path: PathBuf,
    pub name: String,
    pub uuid: String,
}

impl Served {
    fn label(&self) -> String {
        if self.name.is_empty() {
            format!("unnamed array {}", self.uuid)
        } else {
            format!("'{}' ({})", self.name, self.uuid)
        }
    }
}

/// Every server answering in `dir`, in path order (sockets nobody listens on are left
/// over from a server that was killed: skipped), and the sockets where a server accepted
/// but did not answer in time.
pub fn discover_all(dir: &Path) -> (Vec<Served>, Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (Vec::new(), Vec::new());
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .filter(|p| {
            use std::os::unix::fs::FileTypeExt;
            std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
        })
        .collect();
    paths.sort();
    let (mut served, mut silent) = (Vec::new(), Vec::new());
    for path in paths {
        let Ok(mut c) = Client::connect(&path, HELLO_WAIT) else {
            continue;
        };
        match c.call(&Request::Hello {}) {
            Ok(r) => served.push(Served {
                name: r.name.unwrap_or_default(),
                uuid: r.uuid.unwrap_or_default(),
                path,
            }),
            Err(_) => silent.push(path),
        }
    }
    (served, silent)
}

/// How long a server has to say who it is.
const HELLO_WAIT: Duration = Duration::from_secs(2);

/// Connects to the served array `array` names (a name, a UUID, or a socket path), or to the
/// only one served. `usage` shows how to name members instead, for the error message.
pub fn select(array: Option<&str>, usage: &str) -> Result<Client> {
    // Long enough for a member commit on slow disks.
    let timeout = Duration::from_secs(120);
    if let Some(a) = array.filter(|a| a.contains('/')) {
        return Client::connect(Path::new(a), timeout);
    }
    let dir = default_dir();
    let (served, silent) = discover_all(&dir);
    let pick: Vec<&Served> = match array {
        Some(a) => served
            .iter()
            .filter(|s| s.name == a || s.uuid == a)
            .collect(),
        None => served.iter().collect(),
    };
    match (pick.len(), array) {
        (1, _) => Client::connect(&pick[0].path, timeout),
        (0, _) if !silent.is_empty() => bail!(
            "the server at {} did not answer within {} s",
            silent
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" and "),
            HELLO_WAIT.as_secs()
        ),
        (0, None) => bail!(
            "no array is served (no control socket answers in {}); for an array that is not \
             served, name its members: {usage}",
            dir.display()
        ),
        (0, Some(a)) if served.is_empty() => bail!(
            "no array named '{a}' is served (no control socket answers in {}); for an array \
             that is not served, name its members: {usage}",
            dir.display()
        ),
        (0, Some(a)) => bail!(
            "no array named '{a}' is served; served: {}",
            served
                .iter()
                .map(Served::label)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (n, None) => bail!(
            "{n} arrays are served ({}); choose one with --array NAME",
            pick.iter()
                .map(|s| s.label())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (n, Some(a)) => bail!(
            "{n} served arrays are named '{a}' ({}); choose one with --array UUID",
            pick.iter()
                .map(|s| s.label())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// What `status` shows of the NBD exports of `registries`: name, description, size,
/// read-only and connections.
pub(crate) fn exports_json(registries: &[damocles_nbd::Exports]) -> serde_json::Value {
    let v: Vec<serde_json::Value> = registries
        .iter()
        .flat_map(|x| x.list())
        .map(|e| {
            serde_json::json!({
                "name": e.name,
                "description": e.description,
                "size": e.size,
                "read_only": e.read_only,
                "connections": e.connections,
            })
        })
        .collect();
    v.into()
}
