//! The set of named exports a server offers, changeable while it serves.
//!
//! [`Exports`] is a cheap handle (clones share one registry) that any thread may use:
//! [`Exports::add`] makes an export reachable by the next handshake, [`Exports::remove`]
//! makes it unreachable to new clients. A client's export name is resolved against the
//! registry during its handshake; a connection that enters transmission holds its export
//! (counted in [`Exports::connections`]) until it ends.
//!
//! Removing an export that has connections is refused ([`ExportError::Busy`]) unless
//! forced; a forced removal stops those connections as a server shutdown does: they read
//! no more requests, answer the ones already received, and close. [`Removed::wait_closed`]
//! waits for them to be gone (after which the device is no longer used by this server).

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::device::BlockDevice;
use crate::stats::ExportStats;
use crate::wire;

/// One export, as given to [`Exports::add`].
#[derive(Clone)]
pub struct Export {
    /// The name clients ask for (any NBD string: UTF-8, no NUL, at most 4096 bytes).
    pub name: String,
    /// Shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION (empty: none).
    pub description: String,
    /// Refuse writes (the export is also read-only if the device says so).
    pub read_only: bool,
    pub device: Arc<dyn BlockDevice>,
    /// Where this export's connections and requests are counted, if anywhere.
    pub stats: Option<Arc<ExportStats>>,
}

impl Export {
    /// A writable export without description or stats.
    pub fn new(name: impl Into<String>, device: Arc<dyn BlockDevice>) -> Export {
        Export {
            name: name.into(),
            description: String::new(),
            read_only: false,
            device,
            stats: None,
        }
    }
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("read_only", &self.read_only)
            .field("size", &self.device.size())
            .finish()
    }
}

/// What [`Exports::list`] shows of one export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    pub name: String,
    pub description: String,
    /// Read-only as clients see it (the export's flag or the device's).
    pub read_only: bool,
    pub size: u64,
    /// Connections in transmission on it now.
    pub connections: usize,
}

/// Why the registry refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("export name {0:?} is not valid (UTF-8 without NUL, at most 4096 bytes)")]
    BadName(String),
    #[error("the description of export '{0}' is over 4096 bytes")]
    BadDescription(String),
    #[error("export '{0}' already exists")]
    Exists(String),
    #[error("no export '{0}'")]
    Unknown(String),
    #[error("export '{name}' has {connections} client connection(s) open")]
    Busy { name: String, connections: usize },
}

/// A registered export and what the server keeps for it.
pub(crate) struct Entry {
    pub(crate) export: Export,
    /// Connections holding it (a [`Claim`] each).
    conns: Mutex<usize>,
    conns_cv: Condvar,
    /// Turns true when it is removed with force: its connections stop.
    removed: watch::Sender<bool>,
}

impl Entry {
    pub(crate) fn read_only(&self) -> bool {
        self.export.read_only || self.export.device.read_only()
    }

    /// Resolves once the export has been removed with force (never otherwise).
    pub(crate) fn removed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        wait_shutdown(self.removed.subscribe())
    }

    fn count(&self) -> MutexGuard<'_, usize> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection's hold on its export: counted while it lives.
pub(crate) struct Claim(pub(crate) Arc<Entry>);

impl Drop for Claim {
    fn drop(&mut self) {
        let mut n = self.0.count();
        *n = n.saturating_sub(1);
        self.0.conns_cv.notify_all();
        drop(n);
        if let Some(s) = &self.0.export.stats {
            s.disconnected();
        }
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Claim({:?})", self.0.export.name)
    }
}

/// An export taken out of the registry by [`Exports::remove`].
#[derive(Debug)]
pub struct Removed {
    pub name: String,
    /// Connections it had when removed (non-zero only for a forced removal); they are
    /// being stopped.
    pub connections: usize,
    entry: Arc<Entry>,
}

impl Removed {
    /// Blocks until the export's connections have all ended, or `timeout` has passed
    /// (false). Not for async tasks: it blocks the thread.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut n = self.entry.count();
        while *n > 0 {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = self
                .entry
                .conns_cv
                .wait_timeout(n, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.export.fmt(f)
    }
}

/// The exports of a server; clones share the same set. See the module docs.
#[derive(Clone, Default)]
pub struct Exports {
    map: Arc<Mutex<BTreeMap<String, Arc<Entry>>>>,
}

impl std::fmt::Debug for Exports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.lock().keys()).finish()
    }
}

/// Longest list of names put into a refusal message.
const NAMES_IN_MESSAGE: usize = 1024;

impl Exports {
    /// An empty registry.
    pub fn new() -> Exports {
        Exports::default()
    }

    /// A registry holding `export` alone.
    pub fn single(export: Export) -> Result<Exports, ExportError> {
        let e = Exports::new();
        e.add(export)?;
        Ok(e)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `export`; the next handshake can select it. A name already present is
    /// refused.
    pub fn add(&self, export: Export) -> Result<(), ExportError> {
        if wire::parse_string(export.name.as_bytes()).is_err() {
            return Err(ExportError::BadName(export.name));
        }
        if export.description.len() > wire::MAX_STRING_LEN {
            return Err(ExportError::BadDescription(export.name));
        }
        let mut map = self.lock();
        if map.contains_key(&export.name) {
            return Err(ExportError::Exists(export.name));
        }
        let entry = Entry {
            export,
            conns: Mutex::new(0),
            conns_cv: Condvar::new(),
            removed: watch::channel(false).0,
        };
        map.insert(entry.export.name.clone(), Arc::new(entry));
        Ok(())
    }

    /// Takes the export `name` out: no new client can select it. With connections open
    /// on it this is refused ([`ExportError::Busy`], nothing changed) unless `force`;
    /// forced, those connections are stopped (see the module docs).
    pub fn remove(&self, name: &str, force: bool) -> Result<Removed, ExportError> {
        let mut map = self.lock();
        let Some(entry) = map.get(name) else {
            return Err(ExportError::Unknown(name.to_owned()));
        };
        // Claims are taken under the map's lock, so none appears between this and the
        // removal.
        let connections = *entry.count();
        if connections > 0 && !force {
            return Err(ExportError::Busy {
                name: name.to_owned(),
                connections,
            });
        }
        let entry = map.remove(name).expect("looked up above");
        drop(map);
        entry.removed.send_replace(true);
        Ok(Removed {
            name: name.to_owned(),
            connections,
            entry,
        })
    }

    /// Every export, by name.
    pub fn list(&self) -> Vec<ExportSummary> {
        self.entries()
            .iter()
            .map(|e| ExportSummary {
                name: e.export.name.clone(),
                description: e.export.description.clone(),
                read_only: e.read_only(),
                size: e.export.device.size(),
                connections: *e.count(),
            })
            .collect()
    }

    /// Connections in transmission on export `name` (None: no such export).
    pub fn connections(&self, name: &str) -> Option<usize> {
        self.lock().get(name).map(|e| *e.count())
    }

    /// Whether `self` and `other` are handles of the same registry.
    pub fn same(&self, other: &Exports) -> bool {
        Arc::ptr_eq(&self.map, &other.map)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub(crate) fn entries(&self) -> Vec<Arc<Entry>> {
        self.lock().values().cloned().collect()
    }

    /// The export a client's `name` selects: that name, or for the empty name the only
    /// export. Err: the message to send the client.
    pub(crate) fn resolve(&self, name: &str) -> Result<Arc<Entry>, String> {
        let map = self.lock();
        Self::find(&map, name).cloned()
    }

    /// [`Exports::resolve`], and counts the connection on it until the claim is dropped.
    pub(crate) fn claim(&self, name: &str) -> Result<Claim, String> {
        let map = self.lock();
        let entry = Self::find(&map, name)?.clone();
        *entry.count() += 1;
        drop(map);
        if let Some(s) = &entry.export.stats {
            s.connected();
        }
        Ok(Claim(entry))
    }

    fn find<'a>(
        map: &'a BTreeMap<String, Arc<Entry>>,
        name: &str,
    ) -> Result<&'a Arc<Entry>, String> {
        if let Some(e) = map.get(name) {
            return Ok(e);
        }
        if name.is_empty() {
            let mut it = map.values();
            return match (it.next(), it.next()) {
                (Some(e), None) => Ok(e),
                (None, _) => Err("this server has no exports".into()),
                _ => Err(format!(
                    "no default export: this server has {} exports, ask for one by name: {}",
                    map.len(),
                    names(map)
                )),
            };
        }
        Err(if map.is_empty() {
            format!("unknown export '{name}': this server has no exports")
        } else {
            format!("unknown export '{name}'; exports: {}", names(map))
        })
    }
}

/// The names of `map`, quoted, cut short if very long.
fn names(map: &BTreeMap<String, Arc<Entry>>) -> String {
    let mut s = String::new();
    for (i, n) in map.keys().enumerate() {
        if s.len() + n.len() > NAMES_IN_MESSAGE {
            s.push_str(&format!("... ({} more)", map.len() - i));
            break;
        }
        if i > 0 {
            s.push_str(", ");
        }
        s.push('\'');
        s.push_str(n);
        s.push('\'');
    }
    s
}

/// Resolves once `true` has been sent on the channel. A dropped sender means
/// shutdown never happens.
pub(crate) async fn wait_shutdown(mut rx: watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemDevice;

    fn mem(name: &str) -> Export {
        Export::new(name, Arc::new(MemDevice::new(1 << 20)))
    }

    #[test]
    fn add_refuses_duplicates_and_bad_names() {
        let x = Exports::new();
        x.add(mem("a")).unwrap();
        assert_eq!(x.add(mem("a")), Err(ExportError::Exists("a".into())));
        assert!(matches!(x.add(mem("a\0b")), Err(ExportError::BadName(_))));
        let mut long = mem("d");
        long.description = "x".repeat(5000);
        assert!(matches!(x.add(long), Err(ExportError::BadDescription(_))));
        assert_eq!(x.len(), 1);
    }

    #[test]
    fn empty_name_selects_the_only_export() {
        let x = Exports::new();
        assert_eq!(x.resolve("").unwrap_err(), "this server has no exports");
        x.add(mem("a")).unwrap();
        assert_eq!(x.resolve("").unwrap().export.name, "a");
        x.add(mem("b")).unwrap();
        let e = x.resolve("").unwrap_err();
        assert!(e.contains("'a', 'b'"), "{e}");
        assert_eq!(x.resolve("b").unwrap().export.name, "b");
        let e = x.resolve("c").unwrap_err();
        assert!(e.contains("unknown export 'c'") && e.contains("'a'"), "{e}");
    }

    #[test]
    fn busy_removal_is_refused_unless_forced() {
        let x = Exports::new();
        x.add(mem("a")).unwrap();
        let claim = x.claim("a").unwrap();
        assert_eq!(x.connections("a"), Some(1));
        assert_eq!(
            x.remove("a", false).unwrap_err(),
            ExportError::Busy {
                name: "a".into(),
                connections: 1
            }
        );
        assert!(x.contains("a"));
        let r = x.remove("a", true).unwrap();
        assert_eq!(r.connections, 1);
        assert!(!x.contains("a"));
        assert!(*r.entry.removed.borrow());
        assert!(x.claim("a").is_err());
        assert!(!r.wait_closed(Duration::from_millis(10)));
        drop(claim);
        assert!(r.wait_closed(Duration::ZERO));
        assert_eq!(
            x.remove("a", true).unwrap_err(),
            ExportError::Unknown("a".into())
        );
    }

    #[test]
    fn claims_count_in_stats_too() {
        let x = Exports::new();
        let mut e = mem("a");
        let stats = Arc::new(ExportStats::new());
        e.stats = Some(stats.clone());
        x.add(e).unwrap();
        let c = x.claim("").unwrap();
        assert_eq!(stats.snapshot().connections, 1);
        assert_eq!(x.list()[0].connections, 1);
        drop(c);
        assert_eq!(stats.snapshot().connections, 0);
        assert_eq!(stats.snapshot().connections_total, 1);
        assert_eq!(x.connections("a"), Some(0));
        x.remove("a", false).unwrap();
    }
}
