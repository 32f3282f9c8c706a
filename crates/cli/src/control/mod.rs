//! The control socket: how commands reach an array that `damocles serve` is serving.
//!
//! Each server listens on `<dir>/<array-uuid>.sock`, where `<dir>` is
//! `$XDG_RUNTIME_DIR/damocles`, or `/run/damocles` without XDG_RUNTIME_DIR. Clients find an
//! array by name by asking every socket there who it is, so two arrays with one name, or
//! a renamed array, never point a command at the wrong server.

pub mod proto;
pub mod server;

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
        let n = self.reader.read_line(&mut resp).with_context(lost)?;
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

/// Every server answering in `dir`, in path order. Sockets nobody answers on are left over
/// from a server that was killed: skipped.
pub fn discover(dir: &Path) -> Vec<Served> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
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
    paths
        .into_iter()
        .filter_map(|path| {
            let mut c = Client::connect(&path, Duration::from_secs(2)).ok()?;
            let r = c.call(&Request::Hello {}).ok()?;
            Some(Served {
                name: r.name.unwrap_or_default(),
                uuid: r.uuid.unwrap_or_default(),
                path,
            })
        })
        .collect()
}

/// Connects to the served array `array` names (a name, a UUID, or a socket path), or to the
/// only one served. `usage` shows how to name members instead, for the error message.
pub fn select(array: Option<&str>, usage: &str) -> Result<Client> {
    // Long enough for a member commit on slow disks.
    let timeout = Duration::from_secs(120);
    if let Some(a) = array.filter(|a| a.contains('/')) {
        return Client::connect(Path::new(a), timeout);
    }
    let dir = default_dir();
    let served = discover(&dir);
    let pick: Vec<&Served> = match array {
        Some(a) => served
            .iter()
            .filter(|s| s.name == a || s.uuid == a)
            .collect(),
        None => served.iter().collect(),
    };
    match (pick.len(), array) {
        (1, _) => Client::connect(&pick[0].path, timeout),
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
