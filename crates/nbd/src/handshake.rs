//! Fixed newstyle handshake: a sans-I/O option state machine plus a small
//! async driver that feeds it from a stream.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::exports::{Claim, Entry, Exports};
use crate::tls::TlsMode;
use crate::wire::{self, *};
use crate::{NbdError, ServerConfig};

/// Export properties the handshake advertises (read from the export's device at each
/// NBD_OPT_INFO / GO, so a device that grows is seen at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub read_only: bool,
    pub preferred_block_size: u32,
}

/// Result of a successful handshake: what transmission may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub size: u64,
    pub transmission_flags: u16,
    pub read_only: bool,
    pub structured: bool,
    /// Context id of `base:allocation`, if selected.
    pub base_allocation: Option<u32>,
}

/// What the driver should do after writing the bytes produced for an option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionOutcome {
    /// Keep haggling.
    Continue,
    /// Client sent NBD_OPT_ABORT; close after writing the ACK.
    Abort,
    /// Enter transmission after writing the reply.
    Transmission(Negotiated),
    /// NBD_OPT_STARTTLS was acknowledged: the TLS handshake follows the reply, and the
    /// option haggling goes on inside TLS.
    StartTls,
    /// Hard disconnect (nothing sensible can be sent).
    Disconnect(&'static str),
}

/// Id we hand out for `base:allocation` in SET_META_CONTEXT.
const BASE_ALLOCATION_ID: u32 = 1;

/// The option-haggling state of one connection.
#[derive(Debug)]
pub struct Negotiator {
    exports: Exports,
    max_request: u32,
    /// The export GO or EXPORT_NAME selected, held (counted) for the connection.
    chosen: Option<Claim>,
    fixed: bool,
    no_zeroes: bool,
    structured: bool,
    base_allocation: bool,
    /// TLS offered or required (None: NOTLS).
    tls: Option<TlsMode>,
    /// STARTTLS was acknowledged.
    tls_active: bool,
}

impl Negotiator {
    /// Haggling over the exports of `exports` (resolved at each option, so exports
    /// added or removed meanwhile count). Only `cfg`'s server-wide settings are used.
    pub fn new(cfg: &ServerConfig, exports: Exports) -> Self {
        Negotiator {
            exports,
            max_request: cfg.max_request,
            chosen: None,
            fixed: false,
            no_zeroes: false,
            structured: false,
            base_allocation: false,
            tls: cfg.tls.as_ref().map(|t| t.mode()),
            tls_active: false,
        }
    }

    /// True while TLS is required and not yet started: options are refused.
    fn tls_missing(&self) -> bool {
        self.tls == Some(TlsMode::Require) && !self.tls_active
    }

    /// Whether the option haggling runs inside TLS.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    pub fn greeting(&self) -> [u8; 18] {
        wire::encode_greeting()
    }

    /// The 32-bit client flags; unknown bits require dropping the connection.
    pub fn client_flags(&mut self, flags: u32) -> Result<(), NbdError> {
        if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
            return Err(NbdError::ClientFlags(flags));
        }
        self.fixed = flags & FLAG_C_FIXED_NEWSTYLE != 0;
        self.no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
        Ok(())
    }

    /// Whether option replies may be sent (client is fixed newstyle).
    pub fn is_fixed(&self) -> bool {
        self.fixed
    }

    /// The export selected by GO or EXPORT_NAME, once transmission is reached.
    pub(crate) fn take_chosen(&mut self) -> Option<Claim> {
        self.chosen.take()
    }

    /// Transmission flags of an export that is `read_only` or not.
    pub fn transmission_flags(&self, read_only: bool) -> u16 {
        let mut f = FLAG_HAS_FLAGS
            | FLAG_SEND_FLUSH
            | FLAG_SEND_FUA
            | FLAG_CAN_MULTI_CONN
            | FLAG_SEND_CACHE;
        if read_only {
            f |= FLAG_READ_ONLY;
        } else {
            f |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES;
        }
        if self.structured {
            f |= FLAG_SEND_DF;
        }
        f
    }

    fn negotiated(&self, export: ExportInfo) -> Negotiated {
        Negotiated {
            size: export.size,
            transmission_flags: self.transmission_flags(export.read_only),
            read_only: export.read_only,
            structured: self.structured,
            base_allocation: (self.structured && self.base_allocation)
                .then_some(BASE_ALLOCATION_ID),
        }
    }

    /// Reply for an option whose data exceeded the server's limit (already skipped).
    pub fn oversized_option(&mut self, option: u32, out: &mut Vec<u8>) -> OptionOutcome {
        if !self.fixed || option == OPT_EXPORT_NAME {
            return OptionOutcome::Disconnect("oversized option");
        }
        if self.tls_missing() {
            err_reply(out, option, REP_ERR_TLS_REQD, TLS_REQUIRED);
            return OptionOutcome::Continue;
        }
        if option == OPT_SET_META_CONTEXT {
            self.base_allocation = false;
        }
        err_reply(out, option, REP_ERR_TOO_BIG, "option data too large");
        OptionOutcome::Continue
    }

    /// Process one option; replies are appended to `out`.
    pub fn handle_option(
        &mut self,
        option: u32,
        data: &[u8],
        shutting_down: bool,
        out: &mut Vec<u8>,
    ) -> OptionOutcome {
        if option == OPT_EXPORT_NAME {
            return self.export_name_option(data, shutting_down, out);
        }
        if !self.fixed {
            // Old newstyle clients cannot parse option replies.
            return OptionOutcome::Disconnect("non-fixed newstyle client sent an option");
        }
        if option == OPT_ABORT {
            encode_option_reply(out, option, REP_ACK, &[]);
            return OptionOutcome::Abort;
        }
        if shutting_down {
            err_reply(out, option, REP_ERR_SHUTDOWN, "server shutting down");
            return OptionOutcome::Continue;
        }
        if option == OPT_STARTTLS {
            return self.starttls(data, out);
        }
        if self.tls_missing() {
            // FORCEDTLS: everything but STARTTLS and ABORT, INFO and GO included.
            err_reply(out, option, REP_ERR_TLS_REQD, TLS_REQUIRED);
            return OptionOutcome::Continue;
        }
        match option {
            OPT_LIST => {
                if !data.is_empty() {
                    err_reply(out, option, REP_ERR_INVALID, "LIST takes no data");
                } else {
                    // NBD_REP_SERVER: name length, name, then the description.
                    for e in self.exports.entries() {
                        let (name, desc) = (&e.export.name, &e.export.description);
                        let mut d = Vec::with_capacity(4 + name.len() + desc.len());
                        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                        d.extend_from_slice(name.as_bytes());
                        d.extend_from_slice(desc.as_bytes());
                        encode_option_reply(out, option, REP_SERVER, &d);
                    }
                    encode_option_reply(out, option, REP_ACK, &[]);
                }
                OptionOutcome::Continue
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    err_reply(
                        out,
                        option,
                        REP_ERR_INVALID,
                        "STRUCTURED_REPLY takes no data",
                    );
                } else {
                    self.structured = true;
                    encode_option_reply(out, option, REP_ACK, &[]);
                }
                OptionOutcome::Continue
            }
            OPT_INFO | OPT_GO => self.info_or_go(option, data, out),
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => self.meta_context(option, data, out),
            // EXTENDED_HEADERS and anything unknown.
            _ => {
                err_reply(out, option, REP_ERR_UNSUP, "option not supported");
                OptionOutcome::Continue
            }
        }
    }

    fn starttls(&mut self, data: &[u8], out: &mut Vec<u8>) -> OptionOutcome {
        if self.tls.is_none() {
            err_reply(
                out,
                OPT_STARTTLS,
                REP_ERR_UNSUP,
                "TLS is not enabled on this server",
            );
        } else if self.tls_active {
            err_reply(
                out,
                OPT_STARTTLS,
                REP_ERR_INVALID,
                "TLS is already negotiated",
            );
        } else if !data.is_empty() {
            err_reply(out, OPT_STARTTLS, REP_ERR_INVALID, "STARTTLS takes no data");
        } else {
            encode_option_reply(out, OPT_STARTTLS, REP_ACK, &[]);
            self.tls_active = true;
            // The spec: nothing negotiated before STARTTLS survives it.
            self.structured = false;
            self.base_allocation = false;
            return OptionOutcome::StartTls;
        }
        OptionOutcome::Continue
    }

    fn export_name_option(
        &mut self,
        data: &[u8],
        shutting_down: bool,
        out: &mut Vec<u8>,
    ) -> OptionOutcome {
        if shutting_down {
            return OptionOutcome::Disconnect("server shutting down");
        }
        if self.tls_missing() {
            // EXPORT_NAME cannot carry an error.
            return OptionOutcome::Disconnect("client skipped TLS, which this export requires");
        }
        let Ok(name) = wire::parse_string(data) else {
            return OptionOutcome::Disconnect("export name is not a valid NBD string");
        };
        let claim = match self.exports.claim(&name) {
            Ok(c) => c,
            Err(why) => {
                // EXPORT_NAME cannot carry an error, so the spec mandates a disconnect.
                tracing::info!("NBD_OPT_EXPORT_NAME refused: {why}");
                return OptionOutcome::Disconnect("unknown export");
            }
        };
        let export = export_info(&claim.0);
        self.chosen = Some(claim);
        out.extend_from_slice(&export.size.to_be_bytes());
        out.extend_from_slice(&self.transmission_flags(export.read_only).to_be_bytes());
        if !self.no_zeroes {
            out.extend_from_slice(&[0u8; 124]);
        }
        OptionOutcome::Transmission(self.negotiated(export))
    }

    fn info_or_go(&mut self, option: u32, data: &[u8], out: &mut Vec<u8>) -> OptionOutcome {
        let req = match wire::parse_export_request(data) {
            Ok(r) => r,
            Err(_) => {
                err_reply(out, option, REP_ERR_INVALID, "malformed INFO/GO request");
                return OptionOutcome::Continue;
            }
        };
        // GO holds the export from here on (counted, and safe from a removal that is
        // not forced); INFO only looks.
        let (entry, claim) = if option == OPT_GO {
            match self.exports.claim(&req.name) {
                Ok(c) => (c.0.clone(), Some(c)),
                Err(why) => {
                    err_reply(out, option, REP_ERR_UNKNOWN, &why);
                    return OptionOutcome::Continue;
                }
            }
        } else {
            match self.exports.resolve(&req.name) {
                Ok(e) => (e, None),
                Err(why) => {
                    err_reply(out, option, REP_ERR_UNKNOWN, &why);
                    return OptionOutcome::Continue;
                }
            }
        };
        let export = export_info(&entry);
        let mut d = Vec::with_capacity(16);
        d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        d.extend_from_slice(&export.size.to_be_bytes());
        d.extend_from_slice(&self.transmission_flags(export.read_only).to_be_bytes());
        encode_option_reply(out, option, REP_INFO, &d);
        if req.info_requests.contains(&INFO_NAME) {
            // The canonical name: what the empty name selected, too.
            let mut d = INFO_NAME.to_be_bytes().to_vec();
            d.extend_from_slice(entry.export.name.as_bytes());
            encode_option_reply(out, option, REP_INFO, &d);
        }
        let description = &entry.export.description;
        if req.info_requests.contains(&INFO_DESCRIPTION) && !description.is_empty() {
            let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
            d.extend_from_slice(description.as_bytes());
            encode_option_reply(out, option, REP_INFO, &d);
        }
        // Always sent: harmless for clients that did not ask, and our limits are
        // the spec defaults (min 1) so no client is refused for not asking.
        let (min, pref, max) = self.block_sizes(export.preferred_block_size);
        let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        d.extend_from_slice(&min.to_be_bytes());
        d.extend_from_slice(&pref.to_be_bytes());
        d.extend_from_slice(&max.to_be_bytes());
        encode_option_reply(out, option, REP_INFO, &d);
        encode_option_reply(out, option, REP_ACK, &[]);
        match claim {
            Some(c) => {
                self.chosen = Some(c);
                OptionOutcome::Transmission(self.negotiated(export))
            }
            None => OptionOutcome::Continue,
        }
    }

    /// (minimum, preferred, maximum payload) per the spec's constraints, for a device
    /// that prefers `preferred`.
    pub fn block_sizes(&self, preferred: u32) -> (u32, u32, u32) {
        let max = self.max_request;
        let mut pref = preferred;
        if !pref.is_power_of_two() {
            pref = pref.checked_next_power_of_two().unwrap_or(4096);
        }
        pref = pref.clamp(512, max.max(512));
        if pref > max {
            pref = 512;
        }
        (1, pref, max)
    }

    fn meta_context(&mut self, option: u32, data: &[u8], out: &mut Vec<u8>) -> OptionOutcome {
        let set = option == OPT_SET_META_CONTEXT;
        if set {
            // SET replaces the selection even when it fails.
            self.base_allocation = false;
        }
        if !self.structured {
            err_reply(
                out,
                option,
                REP_ERR_INVALID,
                "structured replies not negotiated",
            );
            return OptionOutcome::Continue;
        }
        let req = match wire::parse_meta_context_request(data) {
            Ok(r) => r,
            Err(_) => {
                err_reply(
                    out,
                    option,
                    REP_ERR_INVALID,
                    "malformed meta context request",
                );
                return OptionOutcome::Continue;
            }
        };
        if let Err(why) = self.exports.resolve(&req.export) {
            err_reply(out, option, REP_ERR_UNKNOWN, &why);
            return OptionOutcome::Continue;
        }
        let mut matched = !set && req.queries.is_empty();
        for q in &req.queries {
            let Some((ns, leaf)) = q.split_once(':') else {
                err_reply(out, option, REP_ERR_INVALID, "query lacks a namespace");
                return OptionOutcome::Continue;
            };
            // Unknown namespaces and leaves must be ignored; "base:" is a wildcard
            // only for LIST.
            if ns == "base" && (leaf == "allocation" || (!set && leaf.is_empty())) {
                matched = true;
            }
        }
        if matched {
            let id = if set { BASE_ALLOCATION_ID } else { 0 };
            let mut d = id.to_be_bytes().to_vec();
            d.extend_from_slice(BASE_ALLOCATION.as_bytes());
            encode_option_reply(out, option, REP_META_CONTEXT, &d);
            if set {
                self.base_allocation = true;
            }
        }
        encode_option_reply(out, option, REP_ACK, &[]);
        OptionOutcome::Continue
    }
}

/// What the handshake advertises of `e` now.
fn export_info(e: &Entry) -> ExportInfo {
    ExportInfo {
        size: e.export.device.size(),
        read_only: e.read_only(),
        preferred_block_size: e.export.device.preferred_block_size(),
    }
}

const TLS_REQUIRED: &str = "TLS required: this server needs NBD_OPT_STARTTLS first";

fn err_reply(out: &mut Vec<u8>, option: u32, rep: u32, msg: &str) {
    encode_option_reply(out, option, rep, msg.as_bytes());
}

/// How the option haggling ended.
#[derive(Debug)]
pub(crate) enum Haggled {
    /// The client ended it cleanly (ABORT or EOF between options).
    Closed,
    /// STARTTLS was acknowledged: start TLS, then haggle on inside it.
    StartTls,
    Transmission(Negotiated),
}

/// Sends the greeting and reads the client's flags.
pub(crate) async fn greet<S>(stream: &mut S, neg: &mut Negotiator) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    stream.write_all(&neg.greeting()).await?;
    stream.flush().await?;
    let flags = stream.read_u32().await?;
    neg.client_flags(flags)
}

/// Reads and answers options until the client enters transmission, ends the handshake,
/// or starts TLS.
pub(crate) async fn haggle<S>(
    stream: &mut S,
    neg: &mut Negotiator,
    cfg: &ServerConfig,
    shutting_down: &(dyn Fn() -> bool + Send + Sync),
) -> Result<Haggled, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut out = Vec::new();
    loop {
        let mut hdr = [0u8; OPTION_HEADER_LEN];
        if !read_exact_or_eof(stream, &mut hdr).await? {
            return Ok(Haggled::Closed);
        }
        let h = wire::parse_option_header(&hdr)?;
        out.clear();
        let outcome = if h.len > cfg.max_option_len {
            let mut skip = (&mut *stream).take(u64::from(h.len));
            let skipped = tokio::io::copy(&mut skip, &mut tokio::io::sink()).await?;
            if skipped != u64::from(h.len) {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            neg.oversized_option(h.option, &mut out)
        } else {
            let mut data = vec![0u8; h.len as usize];
            stream.read_exact(&mut data).await?;
            neg.handle_option(h.option, &data, shutting_down(), &mut out)
        };
        stream.write_all(&out).await?;
        stream.flush().await?;
        match outcome {
            OptionOutcome::Continue => {}
            OptionOutcome::Abort => return Ok(Haggled::Closed),
            OptionOutcome::StartTls => return Ok(Haggled::StartTls),
            OptionOutcome::Transmission(n) => return Ok(Haggled::Transmission(n)),
            OptionOutcome::Disconnect(why) => return Err(NbdError::Handshake(why)),
        }
    }
}

/// Fill `buf`; `Ok(false)` on EOF before the first byte.
pub(crate) async fn read_exact_or_eof<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    buf: &mut [u8],
) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exports() -> Exports {
        let dev = std::sync::Arc::new(crate::MemDevice::new(1 << 20));
        Exports::single(crate::Export::new("exp", dev)).unwrap()
    }

    fn info() -> ExportInfo {
        ExportInfo {
            size: 1 << 20,
            read_only: false,
            preferred_block_size: 4096,
        }
    }

    fn neg(fixed: bool) -> Negotiator {
        let mut n = Negotiator::new(&ServerConfig::new("exp"), exports());
        n.client_flags(if fixed { FLAG_C_FIXED_NEWSTYLE } else { 0 })
            .unwrap();
        n
    }

    fn reply_types(out: &[u8]) -> Vec<u32> {
        let mut v = Vec::new();
        let mut p = 0;
        while p < out.len() {
            v.push(u32::from_be_bytes(out[p + 12..p + 16].try_into().unwrap()));
            let len = u32::from_be_bytes(out[p + 16..p + 20].try_into().unwrap()) as usize;
            p += 20 + len;
        }
        v
    }

    #[test]
    fn rejects_unknown_client_flags() {
        let mut n = neg(true);
        assert!(n.client_flags(1 << 5).is_err());
    }

    #[test]
    fn non_fixed_client_only_export_name() {
        let mut n = neg(false);
        let mut out = Vec::new();
        assert!(matches!(
            n.handle_option(OPT_LIST, &[], false, &mut out),
            OptionOutcome::Disconnect(_)
        ));
        assert!(out.is_empty());
        let r = n.handle_option(OPT_EXPORT_NAME, b"exp", false, &mut out);
        assert!(matches!(r, OptionOutcome::Transmission(_)));
        assert_eq!(out.len(), 8 + 2 + 124);
    }

    #[test]
    fn meta_requires_structured_and_set_clears() {
        let mut n = neg(true);
        let mut q = Vec::new();
        q.extend_from_slice(&0u32.to_be_bytes());
        q.extend_from_slice(&1u32.to_be_bytes());
        q.extend_from_slice(&15u32.to_be_bytes());
        q.extend_from_slice(b"base:allocation");
        let mut out = Vec::new();
        n.handle_option(OPT_SET_META_CONTEXT, &q, false, &mut out);
        assert_eq!(reply_types(&out), vec![REP_ERR_INVALID]);
        out.clear();
        n.handle_option(OPT_STRUCTURED_REPLY, &[], false, &mut out);
        n.handle_option(OPT_SET_META_CONTEXT, &q, false, &mut out);
        assert_eq!(reply_types(&out), vec![REP_ACK, REP_META_CONTEXT, REP_ACK]);
        assert_eq!(
            n.negotiated(info()).base_allocation,
            Some(BASE_ALLOCATION_ID)
        );
        out.clear();
        // A malformed SET still clears the selection.
        n.handle_option(OPT_SET_META_CONTEXT, &q[..5], false, &mut out);
        assert_eq!(reply_types(&out), vec![REP_ERR_INVALID]);
        assert_eq!(n.negotiated(info()).base_allocation, None);
    }

    #[test]
    fn shutdown_errors_options_but_acks_abort() {
        let mut n = neg(true);
        let mut out = Vec::new();
        n.handle_option(OPT_LIST, &[], true, &mut out);
        assert_eq!(reply_types(&out), vec![REP_ERR_SHUTDOWN]);
        out.clear();
        assert_eq!(
            n.handle_option(OPT_ABORT, &[], true, &mut out),
            OptionOutcome::Abort
        );
        assert_eq!(reply_types(&out), vec![REP_ACK]);
    }

    fn tls_neg(mode: TlsMode) -> Negotiator {
        let mut b = crate::tls::TlsBuilder::new(mode);
        b.psk(crate::tls::PskTable::parse("alice:00112233").unwrap())
            .unwrap();
        let mut cfg = ServerConfig::new("exp");
        cfg.tls = Some(std::sync::Arc::new(b.build().unwrap()));
        let mut n = Negotiator::new(&cfg, exports());
        n.client_flags(FLAG_C_FIXED_NEWSTYLE).unwrap();
        n
    }

    fn go_request() -> Vec<u8> {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"exp");
        d.extend_from_slice(&0u16.to_be_bytes());
        d
    }

    #[test]
    fn require_refuses_everything_but_starttls_and_abort() {
        let mut n = tls_neg(TlsMode::Require);
        let mut out = Vec::new();
        for (opt, data) in [
            (OPT_LIST, vec![]),
            (OPT_INFO, go_request()),
            (OPT_GO, go_request()),
            (OPT_STRUCTURED_REPLY, vec![]),
            (OPT_LIST_META_CONTEXT, vec![]),
            (99, vec![]),
        ] {
            out.clear();
            assert_eq!(
                n.handle_option(opt, &data, false, &mut out),
                OptionOutcome::Continue
            );
            assert_eq!(reply_types(&out), vec![REP_ERR_TLS_REQD], "option {opt}");
        }
        out.clear();
        assert_eq!(
            n.oversized_option(OPT_LIST, &mut out),
            OptionOutcome::Continue
        );
        assert_eq!(reply_types(&out), vec![REP_ERR_TLS_REQD]);
        // EXPORT_NAME cannot be answered with an error.
        out.clear();
        assert!(matches!(
            n.handle_option(OPT_EXPORT_NAME, b"exp", false, &mut out),
            OptionOutcome::Disconnect(_)
        ));
        assert!(out.is_empty());
        out.clear();
        assert_eq!(
            n.handle_option(OPT_ABORT, &[], false, &mut out),
            OptionOutcome::Abort
        );
        assert_eq!(reply_types(&out), vec![REP_ACK]);
    }

    #[test]
    fn starttls_then_options_inside_tls() {
        let mut n = tls_neg(TlsMode::Require);
        let mut out = Vec::new();
        n.handle_option(OPT_STARTTLS, b"x", false, &mut out);
        assert_eq!(reply_types(&out), vec![REP_ERR_INVALID]);
        assert!(!n.tls_active());
        out.clear();
        assert_eq!(
            n.handle_option(OPT_STARTTLS, &[], false, &mut out),
            OptionOutcome::StartTls
        );
        assert_eq!(reply_types(&out), vec![REP_ACK]);
        assert!(n.tls_active());
        out.clear();
        // Only once.
        n.handle_option(OPT_STARTTLS, &[], false, &mut out);
        assert_eq!(reply_types(&out), vec![REP_ERR_INVALID]);
        out.clear();
        n.handle_option(OPT_LIST, &[], false, &mut out);
        assert_eq!(reply_types(&out), vec![REP_SERVER, REP_ACK]);
        out.clear();
        assert!(matches!(
            n.handle_option(OPT_GO, &go_request(), false, &mut out),
            OptionOutcome::Transmission(_)
        ));
    }

    #[test]
    fn offer_serves_plain_and_starttls_forgets_earlier_state() {
        let mut n = tls_neg(TlsMode::Offer);
        let mut out = Vec::new();
        n.handle_option(OPT_STRUCTURED_REPLY, &[], false, &mut out);
        n.handle_option(OPT_LIST, &[], false, &mut out);
        assert_eq!(reply_types(&out), vec![REP_ACK, REP_SERVER, REP_ACK]);
        assert!(n.negotiated(info()).structured);
        out.clear();
        assert_eq!(
            n.handle_option(OPT_STARTTLS, &[], false, &mut out),
            OptionOutcome::StartTls
        );
        assert!(
            !n.negotiated(info()).structured,
            "STARTTLS keeps no earlier state"
        );
    }

    #[test]
    fn starttls_unsupported_without_tls() {
        let mut n = neg(true);
        let mut out = Vec::new();
        n.handle_option(OPT_STARTTLS, &[], false, &mut out);
        assert_eq!(reply_types(&out), vec![REP_ERR_UNSUP]);
        assert!(!n.tls_active());
    }

    #[test]
    fn block_sizes_sane() {
        let n = neg(true);
        assert_eq!(n.block_sizes(4096), (1, 4096, 32 << 20));
    }
}
