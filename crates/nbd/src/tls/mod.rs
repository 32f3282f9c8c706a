//! TLS for NBD_OPT_STARTTLS, with OpenSSL: X.509 certificates (optionally client
//! certificates checked against a CA) and pre-shared keys, TLS 1.3 external PSK as well as
//! TLS 1.2 PSK cipher suites, which is what GnuTLS clients (libnbd, qemu) negotiate. rustls
//! has no external PSK support, hence OpenSSL (see docs/architecture.md).

mod psk;
mod stream;

pub use psk::{PskError, PskTable};
pub(crate) use stream::{AsyncTls, Raw};

use std::sync::Arc;

use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslRef, SslVerifyMode,
    SslVersion,
};
use openssl::x509::{X509NameRef, X509VerifyResult, X509};

/// Whether clients may or must negotiate TLS (without a [`TlsConfig`] it is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS offered; clients may also go on without it (the spec's SELECTIVETLS with no
    /// TLS-only export).
    Offer,
    /// TLS required (FORCEDTLS): before NBD_OPT_STARTTLS every option but ABORT gets
    /// NBD_REP_ERR_TLS_REQD, and NBD_OPT_EXPORT_NAME is a disconnect.
    Require,
}

/// TLS settings that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {detail}")]
    Bad { what: &'static str, detail: String },
    #[error("no credentials: give a certificate and key, or pre-shared keys")]
    NoCredentials,
    #[error("the private key does not match the certificate: {0}")]
    KeyMismatch(String),
    #[error("a certificate without its private key (or a key without its certificate)")]
    HalfPair,
    #[error(
        "an allow list needs a way to tell clients apart: pre-shared keys, or a CA that \
         client certificates are checked against"
    )]
    AllowWithoutAuth,
    #[error("OpenSSL: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

fn bad(what: &'static str, detail: impl std::fmt::Display) -> TlsError {
    TlsError::Bad {
        what,
        detail: detail.to_string(),
    }
}

/// Collects credentials; [`TlsBuilder::build`] checks them together.
pub struct TlsBuilder {
    mode: TlsMode,
    psk: Option<PskTable>,
    chain: Option<Vec<X509>>,
    key: Option<PKey<Private>>,
    ca: Option<Vec<X509>>,
    allow: Vec<String>,
}

impl TlsBuilder {
    pub fn new(mode: TlsMode) -> Self {
        TlsBuilder {
            mode,
            psk: None,
            chain: None,
            key: None,
            ca: None,
            allow: Vec::new(),
        }
    }

    /// Pre-shared keys (see [`PskTable::parse`] for the psktool file format).
    pub fn psk(&mut self, table: PskTable) -> Result<(), TlsError> {
        if table.is_empty() {
            return Err(bad(
                "pre-shared keys",
                "the file has no identity:hexkey line",
            ));
        }
        self.psk = Some(table);
        Ok(())
    }

    /// The server's certificate, then its chain, in PEM.
    pub fn cert_chain_pem(&mut self, pem: &[u8]) -> Result<(), TlsError> {
        let chain = X509::stack_from_pem(pem).map_err(|e| bad("certificate", pem_error(e)))?;
        if chain.is_empty() {
            return Err(bad("certificate", "no PEM CERTIFICATE block found"));
        }
        self.chain = Some(chain);
        Ok(())
    }

    /// The certificate's private key, in PEM (PKCS#8, or RSA/EC traditional format).
    pub fn key_pem(&mut self, pem: &[u8]) -> Result<(), TlsError> {
        let key = PKey::private_key_from_pem(pem).map_err(|e| bad("private key", pem_error(e)))?;
        self.key = Some(key);
        Ok(())
    }

    /// CA certificates (PEM) that client certificates must chain to; clients without a
    /// valid certificate are then refused (unless they use a pre-shared key).
    pub fn ca_pem(&mut self, pem: &[u8]) -> Result<(), TlsError> {
        let cas = X509::stack_from_pem(pem).map_err(|e| bad("CA", pem_error(e)))?;
        if cas.is_empty() {
            return Err(bad("CA", "no PEM CERTIFICATE block found"));
        }
        self.ca = Some(cas);
        Ok(())
    }

    /// Only these PSK identities or certificate subjects may connect (empty: any client
    /// that authenticates). A subject matches by its common name or by the whole subject
    /// as `openssl x509 -noout -subject -nameopt RFC2253` prints it (`CN=x,O=y`).
    pub fn allow(&mut self, ids: impl IntoIterator<Item = String>) {
        self.allow.extend(ids);
    }

    pub fn build(self) -> Result<TlsConfig, TlsError> {
        if self.chain.is_some() != self.key.is_some() {
            return Err(TlsError::HalfPair);
        }
        if self.chain.is_none() && self.psk.is_none() {
            return Err(TlsError::NoCredentials);
        }
        if !self.allow.is_empty() && self.psk.is_none() && self.ca.is_none() {
            return Err(TlsError::AllowWithoutAuth);
        }
        let allow = Arc::new(self.allow.clone());
        let mut b = SslContext::builder(SslMethod::tls_server())?;
        // The NBD spec: TLS 1.2 or later.
        b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        b.set_options(
            SslOptions::NO_RENEGOTIATION
                | SslOptions::CIPHER_SERVER_PREFERENCE
                | SslOptions::NO_TICKET,
        );
        // AES-128-GCM first: fastest with AES-NI, and the suite OpenSSL's PSK callback
        // needs for TLS 1.3 (SHA-256).
        b.set_ciphersuites(
            "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
        )?;
        // OpenSSL wants one when it verifies clients (PSK sessions go through it too).
        b.set_session_id_context(b"damocles-nbd")?;
        // No resumption: every connection authenticates afresh.
        b.set_num_tickets(0)?;
        // Read whole records (and what follows) per system call, not header then body.
        b.set_read_ahead(true);
        // A write that would block may be retried with a moved buffer (same bytes). Not
        // ENABLE_PARTIAL_WRITE: in transmission one call encrypts a whole reply into the
        // write buffer (one record per call cost ~30% more server CPU per GiB read).
        b.set_mode(SslMode::ACCEPT_MOVING_WRITE_BUFFER);
        if let (Some(chain), Some(key)) = (&self.chain, &self.key) {
            b.set_certificate(&chain[0])?;
            for c in &chain[1..] {
                b.add_extra_chain_cert(c.clone())?;
            }
            // OpenSSL compares the key with the certificate here already.
            b.set_private_key(key)
                .map_err(|e| TlsError::KeyMismatch(first_reason(&e)))?;
            b.check_private_key()
                .map_err(|e| TlsError::KeyMismatch(first_reason(&e)))?;
        }
        if let Some(cas) = &self.ca {
            client_certs(&mut b, cas, allow.clone())?;
        }
        if let Some(table) = self.psk.clone() {
            psk_callback(&mut b, table, allow.clone())?;
        }
        Ok(TlsConfig {
            mode: self.mode,
            ctx: b.build(),
            allow,
            has_psk: self.psk.is_some(),
            has_cert: self.chain.is_some(),
            has_ca: self.ca.is_some(),
        })
    }
}

/// Index of the PSK identity a client used, kept on its `Ssl`.
fn identity_index() -> Result<openssl::ex_data::Index<Ssl, String>, TlsError> {
    static INDEX: std::sync::OnceLock<openssl::ex_data::Index<Ssl, String>> =
        std::sync::OnceLock::new();
    if let Some(i) = INDEX.get() {
        return Ok(*i);
    }
    let i = Ssl::new_ex_index()?;
    Ok(*INDEX.get_or_init(|| i))
}

fn psk_callback(
    b: &mut SslContextBuilder,
    table: PskTable,
    allow: Arc<Vec<String>>,
) -> Result<(), TlsError> {
    let index = identity_index()?;
    b.set_psk_server_callback(move |ssl: &mut SslRef, id: Option<&[u8]>, out: &mut [u8]| {
        let id = String::from_utf8_lossy(id.unwrap_or_default()).into_owned();
        let Some(key) = table.get(&id) else {
            tracing::info!(identity = %id, "TLS: unknown PSK identity; refused");
            return Ok(0);
        };
        if !allow.is_empty() && !allow.contains(&id) {
            tracing::info!(identity = %id, "TLS: PSK identity not in the allow list; refused");
            return Ok(0);
        }
        if key.len() > out.len() {
            tracing::warn!(identity = %id, "TLS: pre-shared key too long for OpenSSL");
            return Ok(0);
        }
        out[..key.len()].copy_from_slice(key);
        ssl.set_ex_data(index, id);
        Ok(key.len())
    });
    Ok(())
}

fn client_certs(
    b: &mut SslContextBuilder,
    cas: &[X509],
    allow: Arc<Vec<String>>,
) -> Result<(), TlsError> {
    for ca in cas {
        b.cert_store_mut().add_cert(ca.clone())?;
    }
    let mut names = openssl::stack::Stack::new()?;
    for ca in cas {
        names.push(ca.subject_name().to_owned()?)?;
    }
    b.set_client_ca_list(names);
    let mode = SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT;
    b.set_verify_callback(mode, move |ok, ctx| {
        let depth = ctx.error_depth();
        let subject = ctx
            .current_cert()
            .map(|c| subject_string(c.subject_name()))
            .unwrap_or_default();
        if !ok {
            tracing::info!(%subject, depth, error = %ctx.error(), "TLS: client certificate refused");
            return false;
        }
        if depth == 0 && !allow.is_empty() {
            let cn = ctx
                .current_cert()
                .and_then(|c| common_name(c.subject_name()))
                .unwrap_or_default();
            if !allow.iter().any(|a| *a == subject || (!cn.is_empty() && *a == cn)) {
                tracing::info!(%subject, "TLS: certificate subject not in the allow list; refused");
                return false;
            }
        }
        true
    });
    Ok(())
}

/// Credentials of one export, ready to accept TLS clients.
pub struct TlsConfig {
    mode: TlsMode,
    ctx: SslContext,
    allow: Arc<Vec<String>>,
    has_psk: bool,
    has_cert: bool,
    has_ca: bool,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("mode", &self.mode)
            .field("psk", &self.has_psk)
            .field("certificate", &self.has_cert)
            .field("client_ca", &self.has_ca)
            .field("allow", &self.allow)
            .finish()
    }
}

impl TlsConfig {
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// True when clients are authenticated (by pre-shared key or a client certificate);
    /// with only a server certificate any client may connect.
    pub fn authenticates_clients(&self) -> bool {
        self.has_psk || self.has_ca
    }

    pub(crate) fn new_ssl(&self) -> Result<Ssl, openssl::error::ErrorStack> {
        Ssl::new(&self.ctx)
    }
}

impl TlsConfig {
    /// After the TLS handshake: whether this client may go on, with a description of who
    /// it is and what was negotiated (for the log). Identities and subjects outside the
    /// allow list were refused during the handshake already; here a client that did not
    /// authenticate at all is refused when pre-shared keys or a client CA are set.
    pub(crate) fn admit(&self, ssl: &SslRef) -> Result<String, String> {
        let psk_id = identity_index().ok().and_then(|i| ssl.ex_data(i)).cloned();
        let cert = ssl.peer_certificate();
        let who = match (&psk_id, &cert) {
            (Some(id), _) => format!("PSK identity {id:?}"),
            (None, Some(c)) => format!("certificate {:?}", subject_string(c.subject_name())),
            (None, None) => "no client authentication".into(),
        };
        let cipher = ssl.current_cipher().map(|c| c.name()).unwrap_or("?");
        let what = format!("{}, {cipher}, {who}", ssl.version_str());
        let verified = cert.is_some() && ssl.verify_result() == X509VerifyResult::OK;
        if self.authenticates_clients() && psk_id.is_none() && !verified {
            return Err(format!(
                "{what}: clients must authenticate with a pre-shared key or a certificate \
                 signed by the CA"
            ));
        }
        Ok(what)
    }
}

/// A subject in RFC 2253 form: last RDN first, `SN=value` joined by commas.
pub fn subject_string(name: &X509NameRef) -> String {
    let parts: Vec<String> = name
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().map(str::to_owned);
            let key = key.unwrap_or_else(|_| e.object().to_string());
            let val = e.data().to_string().unwrap_or_default();
            format!("{key}={}", escape_rfc2253(&val))
        })
        .collect();
    parts.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn common_name(name: &X509NameRef) -> Option<String> {
    let e = name.entries_by_nid(openssl::nid::Nid::COMMONNAME).next()?;
    e.data().to_string().ok()
}

fn escape_rfc2253(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn first_reason(e: &openssl::error::ErrorStack) -> String {
    e.errors()
        .first()
        .and_then(|x| x.reason().map(str::to_owned))
        .unwrap_or_else(|| e.to_string())
}

fn pem_error(e: openssl::error::ErrorStack) -> String {
    format!("not valid PEM ({})", first_reason(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2253_escapes() {
        assert_eq!(escape_rfc2253("a,b"), "a\\,b");
        assert_eq!(escape_rfc2253("#x "), "\\#x\\ ");
        assert_eq!(escape_rfc2253("plain"), "plain");
    }

    #[test]
    fn builder_refuses_incomplete_settings() {
        let b = TlsBuilder::new(TlsMode::Require);
        assert!(matches!(b.build(), Err(TlsError::NoCredentials)));
        let mut b = TlsBuilder::new(TlsMode::Require);
        assert!(b.cert_chain_pem(b"not pem").is_err());
        assert!(b
            .key_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .is_err());
        let mut b = TlsBuilder::new(TlsMode::Require);
        assert!(b.psk(PskTable::parse("").unwrap()).is_err());
        b.psk(PskTable::parse("a:00").unwrap()).unwrap();
        b.allow(["a".to_owned()]);
        assert!(b.build().is_ok());
    }
}
