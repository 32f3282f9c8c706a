//! NBD (Network Block Device) server for damocles.
//!
//! Serves named exports, each backed by a blocking [`BlockDevice`], using the
//! fixed newstyle handshake and the transmission phase as described in the NBD
//! protocol specification (`doc/proto.md` of NetworkBlockDevice/nbd).
//!
//! # Exports
//!
//! [`serve_exports`] serves the exports of an [`Exports`] registry, which the
//! caller may change while it runs: [`Exports::add`] (a name already present is
//! refused) makes an export reachable by the next handshake, [`Exports::remove`]
//! makes it unreachable. Removing an export that clients are connected to is
//! refused ([`ExportError::Busy`]) unless forced; a forced removal stops its
//! connections as a server shutdown does (no more requests are read, those
//! already received are answered, then the connection closes), and
//! [`Removed::wait_closed`] waits for them. Each export has its own
//! description, read-only flag and [`ExportStats`]; limits, timeouts and TLS
//! are server-wide ([`ServerConfig`]).
//!
//! The client's export name is resolved at each option: `NBD_OPT_INFO` and
//! `NBD_OPT_GO` of an unknown name get `NBD_REP_ERR_UNKNOWN` with a message
//! naming the exports, `NBD_OPT_EXPORT_NAME` of one is closed (it cannot carry
//! an error). The empty name selects the only export when there is exactly one,
//! and is refused the same way, naming them, when there are several.
//! `NBD_OPT_LIST` lists every export with its description. Under required TLS
//! every option but `STARTTLS` and `ABORT` (`LIST` too) is refused until TLS is
//! up.
//!
//! [`serve`] and [`serve_connection`] are the single-export shorthand: they
//! serve one device under [`ServerConfig::export_name`], with the config's
//! description, read-only flag and stats, as a one-entry registry.
//!
//! Supported: options `EXPORT_NAME`, `ABORT`, `LIST`, `INFO`, `GO`,
//! `STRUCTURED_REPLY`, `LIST_META_CONTEXT` / `SET_META_CONTEXT`
//! (`base:allocation`), `STARTTLS` (when [`ServerConfig::tls`] is set: TLS
//! offered, or required as the spec's FORCEDTLS mode; see [`tls`]); commands
//! `READ`, `WRITE`, `DISC`, `FLUSH`, `TRIM`, `CACHE` (no-op), `WRITE_ZEROES`,
//! `BLOCK_STATUS`.
//!
//! Not supported (answered with `NBD_REP_ERR_UNSUP`): `EXTENDED_HEADERS`
//! (64-bit headers), and `STARTTLS` without TLS settings. Fast zero is not
//! advertised. Oldstyle negotiation is never offered; non-fixed newstyle
//! clients may only use `NBD_OPT_EXPORT_NAME`, and never TLS.

#![forbid(unsafe_code)]

mod device;
mod exports;
mod handshake;
mod server;
pub mod stats;
pub mod tls;
mod transmission;
mod transport;
pub mod wire;

use std::time::Duration;

pub use device::{BlockDevice, Extent, MemDevice};
pub use exports::{Export, ExportError, ExportSummary, Exports, Removed};
pub use handshake::{ExportInfo, Negotiated, Negotiator, OptionOutcome};
pub use server::{
    serve, serve_connection, serve_connection_with_shutdown, serve_exports,
    serve_exports_connection, Listener,
};
pub use stats::{ExportStats, StatsSnapshot, LATENCY_BUCKETS};
pub use wire::NbdErrno;

/// Server-wide settings, plus the export of the single-export shorthand.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// [`serve`] / [`serve_connection`] only: the export's name (the empty name
    /// also selects it, as the only export). [`serve_exports`] ignores it.
    pub export_name: String,
    /// Single-export shorthand only: the description (NBD_INFO_DESCRIPTION,
    /// NBD_OPT_LIST).
    pub description: String,
    /// Single-export shorthand only: force the export read-only (it is also
    /// read-only if the device says so).
    pub read_only: bool,
    /// Maximum payload of a single READ/WRITE, advertised via NBD_INFO_BLOCK_SIZE.
    pub max_request: u32,
    /// Per-connection bound on requests being processed or awaiting their reply.
    /// A connection runs at most one thread more than this (started on demand).
    pub max_inflight_requests: usize,
    /// Per-connection bound on READ/WRITE payload bytes held in memory. Budgets
    /// are per connection so a client that never reads its replies only stalls
    /// itself; worst-case payload memory is `max_connections * max_inflight_bytes`.
    pub max_inflight_bytes: usize,
    /// Connections beyond this are closed right after accept.
    pub max_connections: usize,
    /// Time a client may spend in option haggling.
    pub handshake_timeout: Duration,
    /// Options with more data than this are skipped and refused.
    pub max_option_len: u32,
    /// After shutdown is signalled, how long [`serve`] waits for connections
    /// to drain before cutting them off (requests already running on the
    /// device still finish, unanswered, before the final flush).
    pub shutdown_grace: Duration,
    /// TLS credentials and whether TLS is offered or required (None: no TLS,
    /// NBD_OPT_STARTTLS is refused). Only TCP and Unix socket connections can use it.
    pub tls: Option<std::sync::Arc<tls::TlsConfig>>,
    /// Single-export shorthand only: where the export's connections and requests
    /// are counted (metrics), if anywhere. Registry exports have their own.
    pub stats: Option<std::sync::Arc<stats::ExportStats>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            export_name: String::new(),
            description: String::new(),
            read_only: false,
            max_request: 32 << 20,
            max_inflight_requests: 64,
            max_inflight_bytes: 64 << 20,
            max_connections: 64,
            handshake_timeout: Duration::from_secs(30),
            max_option_len: 64 << 10,
            shutdown_grace: Duration::from_secs(30),
            tls: None,
            stats: None,
        }
    }
}

impl ServerConfig {
    pub fn new(export_name: impl Into<String>) -> Self {
        ServerConfig {
            export_name: export_name.into(),
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<(), NbdError> {
        let bad = |m: &str| Err(NbdError::Config(m.to_owned()));
        if wire::parse_string(self.export_name.as_bytes()).is_err() {
            return bad("export name must be a valid NBD string");
        }
        if self.description.len() > wire::MAX_STRING_LEN {
            return bad("description too long");
        }
        if self.max_request < 4096 {
            return bad("max_request must be at least 4096");
        }
        if self.max_request > 1 << 31 {
            // A READ's data chunk (8 + length bytes) must fit a 32-bit chunk length.
            return bad("max_request must be at most 2 GiB");
        }
        if self.max_inflight_bytes < self.max_request as usize {
            return bad("max_inflight_bytes must be >= max_request");
        }
        if self.max_inflight_requests == 0 || self.max_connections == 0 {
            return bad("limits must be nonzero");
        }
        Ok(())
    }
}

/// Errors that end a connection (or the server).
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(#[from] wire::WireError),
    #[error("client sent unsupported handshake flags {0:#x}")]
    ClientFlags(u32),
    #[error("handshake ended: {0}")]
    Handshake(&'static str),
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("invalid server configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
}
