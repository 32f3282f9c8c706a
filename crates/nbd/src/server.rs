//! Connection entry points, listeners and graceful shutdown.

use crate::exports::wait_shutdown;
use std::any::Any;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::device::BlockDevice;
use crate::exports::{Claim, Export, Exports};
use crate::handshake::{greet, haggle, Haggled, Negotiated, Negotiator};
use crate::tls;
use crate::transmission;
use crate::transport::{Bridge, Sock};
use crate::{NbdError, ServerConfig};

/// A socket to accept NBD clients on.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

enum Accepted {
    Tcp(TcpStream, SocketAddr),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Listener {
    pub async fn bind_tcp(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Ok(Listener::Tcp(TcpListener::bind(addr).await?))
    }

    /// Bind a Unix socket. An existing file at `path` is an error; the caller
    /// owns the path and removes it when done.
    #[cfg(unix)]
    pub fn bind_unix(path: impl AsRef<std::path::Path>) -> io::Result<Self> {
        Ok(Listener::Unix(tokio::net::UnixListener::bind(path)?))
    }

    /// The bound TCP address (useful after binding port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            #[cfg(unix)]
            Listener::Unix(_) => None,
        }
    }

    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                // Replies are small and latency-bound.
                s.set_nodelay(true)?;
                Ok(Accepted::Tcp(s, a))
            }
            #[cfg(unix)]
            Listener::Unix(l) => Ok(Accepted::Unix(l.accept().await?.0)),
        }
    }
}

/// The one-export registry the single-export entry points serve: `dev` under
/// `cfg.export_name`, with `cfg`'s description, read-only flag and stats.
fn single_export(dev: Arc<dyn BlockDevice>, cfg: &ServerConfig) -> Result<Exports, NbdError> {
    Exports::single(Export {
        name: cfg.export_name.clone(),
        description: cfg.description.clone(),
        read_only: cfg.read_only,
        device: dev,
        stats: cfg.stats.clone(),
    })
    .map_err(|e| NbdError::Config(e.to_string()))
}

/// Serve one client connection until it disconnects.
pub async fn serve_connection<S>(
    stream: S,
    dev: Arc<dyn BlockDevice>,
    cfg: Arc<ServerConfig>,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (_keep, rx) = watch::channel(false);
    serve_connection_with_shutdown(stream, dev, cfg, rx).await
}

/// Serve one client connection; once `true` is sent on `shutdown` the
/// connection stops reading requests, answers those already received, and
/// closes (a connection still in the handshake is closed at once).
///
/// After the handshake, requests are served by blocking threads of their own
/// (see the transmission module). Tokio TCP and Unix streams are switched to
/// blocking mode for that; other streams are driven through the runtime.
pub async fn serve_connection_with_shutdown<S>(
    stream: S,
    dev: Arc<dyn BlockDevice>,
    cfg: Arc<ServerConfig>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let exports = single_export(dev, &cfg)?;
    serve_one(stream, exports, cfg, shutdown, std::future::pending()).await
}

/// [`serve_connection_with_shutdown`] for a client choosing among `exports` (only the
/// server-wide settings of `cfg` are used, not its export fields).
pub async fn serve_exports_connection<S>(
    stream: S,
    exports: Exports,
    cfg: Arc<ServerConfig>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_one(stream, exports, cfg, shutdown, std::future::pending()).await
}

/// [`serve_connection_with_shutdown`], plus `abort`: once it resolves the
/// socket is cut, and this returns when the requests still running on the
/// device have finished (their replies are dropped).
async fn serve_one<S>(
    stream: S,
    exports: Exports,
    cfg: Arc<ServerConfig>,
    shutdown: watch::Receiver<bool>,
    abort: impl Future<Output = ()> + Send,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    cfg.validate()?;
    let conn = Plain::classify(stream);
    if cfg.tls.is_some() && matches!(conn, Plain::Other(_)) {
        return Err(NbdError::Config(
            "TLS needs a TCP or Unix socket connection".into(),
        ));
    }
    let flag = shutdown.clone();
    let is_down = move || *flag.borrow();
    let neg = tokio::select! {
        r = tokio::time::timeout(
            cfg.handshake_timeout,
            handshake(conn, &cfg, exports, &is_down),
        ) => r.map_err(|_| NbdError::HandshakeTimeout)??,
        _ = wait_shutdown(shutdown.clone()) => return Ok(()),
    };
    let Some((neg, claim, conn)) = neg else {
        return Ok(());
    };
    tracing::debug!(?neg, export = %claim.0.export.name, "entering transmission");
    // The connection stops as at shutdown when its export is removed with force.
    let (server_down, removed) = (wait_shutdown(shutdown), claim.0.removed());
    let stop = async move {
        tokio::select! {
            _ = server_down => {}
            _ = removed => tracing::info!("export removed: closing its connection"),
        }
    };
    // A device that keeps state per client (which write-back errors it was told of)
    // gives this connection a handle of its own.
    let dev = claim
        .0
        .export
        .device
        .for_connection()
        .unwrap_or_else(|| claim.0.export.device.clone());
    let stats = claim.0.export.stats.clone();
    let r = match conn {
        Upgraded::Plain(Plain::Tcp(s)) => {
            let t = Sock::from_tokio_tcp(s)?;
            transmission::run(t, dev, stats, &cfg, neg, stop, abort).await
        }
        #[cfg(unix)]
        Upgraded::Plain(Plain::Unix(s)) => {
            let t = Sock::from_tokio_unix(s)?;
            transmission::run(t, dev, stats, &cfg, neg, stop, abort).await
        }
        Upgraded::Plain(Plain::Other(s)) => {
            transmission::run(Bridge::new(s), dev, stats, &cfg, neg, stop, abort).await
        }
        Upgraded::Tls(t) => {
            let t = t.into_blocking()?;
            transmission::run(t, dev, stats, &cfg, neg, stop, abort).await
        }
    };
    // Counted on its export until every request of the connection has finished.
    drop(claim);
    r
}

/// An accepted stream before TLS: a real socket (served from blocking threads in
/// transmission, and able to start TLS) or any other stream.
enum Plain<S> {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
    Other(S),
}

/// Anything the handshake can talk over.
trait HandshakeStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> HandshakeStream for T {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Plain<S> {
    fn classify(stream: S) -> Self {
        let any: Box<dyn Any + Send> = Box::new(stream);
        let any = match any.downcast::<TcpStream>() {
            Ok(s) => return Plain::Tcp(*s),
            Err(any) => any,
        };
        #[cfg(unix)]
        let any = match any.downcast::<tokio::net::UnixStream>() {
            Ok(s) => return Plain::Unix(*s),
            Err(any) => any,
        };
        match any.downcast::<S>() {
            Ok(s) => Plain::Other(*s),
            // Cannot happen: `any` was made from an `S` just above.
            Err(_) => unreachable!("stream of unexpected type"),
        }
    }

    fn as_dyn(&mut self) -> &mut dyn HandshakeStream {
        match self {
            Plain::Tcp(s) => s,
            #[cfg(unix)]
            Plain::Unix(s) => s,
            Plain::Other(s) => s,
        }
    }

    fn into_raw(self) -> io::Result<tls::Raw> {
        match self {
            Plain::Tcp(s) => tls::Raw::from_tokio_tcp(s),
            #[cfg(unix)]
            Plain::Unix(s) => tls::Raw::from_tokio_unix(s),
            Plain::Other(_) => Err(io::Error::other("TLS needs a TCP or Unix socket")),
        }
    }
}

/// The stream the handshake ended on.
enum Upgraded<S> {
    Plain(Plain<S>),
    Tls(tls::AsyncTls),
}

/// What a handshake that reached transmission gives: the terms, the export chosen and
/// the stream.
type Handshaken<S> = (Negotiated, Claim, Upgraded<S>);

/// The export GO or EXPORT_NAME chose.
fn chosen(neg: &mut Negotiator) -> Result<Claim, NbdError> {
    neg.take_chosen()
        .ok_or(NbdError::Handshake("transmission without an export"))
}

/// The whole handshake, with the upgrade to TLS if the client asks for it. `Ok(None)`:
/// the client ended it cleanly.
async fn handshake<S>(
    mut conn: Plain<S>,
    cfg: &ServerConfig,
    exports: Exports,
    is_down: &(dyn Fn() -> bool + Send + Sync),
) -> Result<Option<Handshaken<S>>, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut neg = Negotiator::new(cfg, exports);
    greet(conn.as_dyn(), &mut neg).await?;
    match haggle(conn.as_dyn(), &mut neg, cfg, is_down).await? {
        Haggled::Closed => return Ok(None),
        Haggled::Transmission(n) => {
            let claim = chosen(&mut neg)?;
            return Ok(Some((n, claim, Upgraded::Plain(conn))));
        }
        Haggled::StartTls => {}
    }
    let creds = cfg
        .tls
        .as_ref()
        .ok_or_else(|| NbdError::Config("STARTTLS acknowledged without TLS settings".into()))?;
    let ssl = creds.new_ssl().map_err(|e| NbdError::Tls(e.to_string()))?;
    let mut tls = tls::AsyncTls::accept(ssl, conn.into_raw()?)
        .await
        .map_err(|e| NbdError::Tls(format!("handshake failed: {e}")))?;
    match tls.with_ssl(|s| creds.admit(s)) {
        Ok(who) => tracing::info!("TLS client: {who}"),
        Err(why) => {
            tracing::info!("TLS client refused: {why}");
            return Err(NbdError::Tls(why));
        }
    }
    match haggle(&mut tls, &mut neg, cfg, is_down).await? {
        Haggled::Closed => {
            // close_notify, best effort: the client is leaving anyway.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            Ok(None)
        }
        Haggled::Transmission(n) => {
            let claim = chosen(&mut neg)?;
            Ok(Some((n, claim, Upgraded::Tls(tls))))
        }
        // A second STARTTLS is refused with NBD_REP_ERR_INVALID, never acknowledged.
        Haggled::StartTls => Err(NbdError::Handshake("STARTTLS inside TLS")),
    }
}

/// Accept clients on all `listeners` until `true` is sent on `shutdown`.
/// Then stop accepting, let connections answer their in-flight requests
/// (up to `cfg.shutdown_grace`; after that their sockets are cut and only
/// the device calls already running are waited for), flush the device and
/// return.
///
/// Serves the one export `dev`, named and described by `cfg` (a one-entry
/// [`Exports`]; see [`serve_exports`]).
pub async fn serve(
    listeners: Vec<Listener>,
    dev: Arc<dyn BlockDevice>,
    cfg: Arc<ServerConfig>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NbdError> {
    cfg.validate()?;
    let exports = single_export(dev, &cfg)?;
    serve_exports(listeners, exports, cfg, shutdown).await
}

/// [`serve`] for every export of `exports`, which may change while this runs (an
/// export added is reachable by the next handshake). Only the server-wide settings of
/// `cfg` are used, not its export fields. At the end the devices of the exports then
/// registered are flushed.
pub async fn serve_exports(
    listeners: Vec<Listener>,
    exports: Exports,
    cfg: Arc<ServerConfig>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NbdError> {
    cfg.validate()?;
    let (tx, mut rx) = mpsc::channel::<io::Result<Accepted>>(8);
    let mut acceptors = JoinSet::new();
    for l in listeners {
        let tx = tx.clone();
        acceptors.spawn(async move {
            loop {
                let r = l.accept().await;
                let failed = r.is_err();
                if tx.send(r).await.is_err() {
                    return;
                }
                if failed {
                    // e.g. EMFILE: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
    drop(tx);

    let mut conns = JoinSet::new();
    let (abort_tx, abort_rx) = watch::channel(false);
    let stop = wait_shutdown(shutdown.clone());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => log_conn_end(done),
            acc = rx.recv() => {
                let Some(acc) = acc else { break };
                let acc = match acc {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                if conns.len() >= cfg.max_connections {
                    tracing::warn!("connection limit reached; refusing client");
                    continue;
                }
                let (ex, cfg, sd) = (exports.clone(), cfg.clone(), shutdown.clone());
                let abort = wait_shutdown(abort_rx.clone());
                match acc {
                    Accepted::Tcp(s, addr) => {
                        tracing::debug!(%addr, "client connected");
                        conns.spawn(serve_one(s, ex, cfg, sd, abort));
                    }
                    #[cfg(unix)]
                    Accepted::Unix(s) => {
                        tracing::debug!("unix client connected");
                        conns.spawn(serve_one(s, ex, cfg, sd, abort));
                    }
                }
            }
        }
    }
    acceptors.abort_all();
    drop(rx);

    let drain = async {
        while let Some(done) = conns.join_next().await {
            log_conn_end(done);
        }
    };
    if tokio::time::timeout(cfg.shutdown_grace, drain)
        .await
        .is_err()
    {
        tracing::warn!("connections did not drain in time; cutting them off");
        let _ = abort_tx.send(true);
        // Only device calls already under way are left; the flush below must
        // come after them.
        while let Some(done) = conns.join_next().await {
            log_conn_end(done);
        }
    }
    let devices: Vec<_> = exports
        .entries()
        .into_iter()
        .map(|e| e.export.device.clone())
        .collect();
    tokio::task::spawn_blocking(move || {
        // Every device is flushed even when one fails; the first error is returned.
        let results: Vec<io::Result<()>> = devices.iter().map(|d| d.flush()).collect();
        results.into_iter().collect::<io::Result<()>>()
    })
    .await
    .map_err(|e| io::Error::other(e.to_string()))??;
    Ok(())
}

fn log_conn_end(done: Result<Result<(), NbdError>, tokio::task::JoinError>) {
    match done {
        Ok(Ok(())) => tracing::debug!("client disconnected"),
        Ok(Err(e)) => tracing::info!(error = %e, "connection ended with error"),
        Err(e) => tracing::warn!(error = %e, "connection task failed"),
    }
}
