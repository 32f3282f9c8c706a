//! NBD wire format: constants, pure parsers and encoders.
//!
//! Everything here is free of I/O so it can be unit-tested and fuzzed directly.
//! All integers on the wire are big-endian.

use std::io;

// Handshake magics.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

// Transmission magics.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_SEND_DF: u16 = 1 << 7;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const FLAG_SEND_RESIZE: u16 = 1 << 9;
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_PEEK_EXPORT: u32 = 4;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_BIT: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR_BIT | 1;
pub const REP_ERR_POLICY: u32 = REP_ERR_BIT | 2;
pub const REP_ERR_INVALID: u32 = REP_ERR_BIT | 3;
pub const REP_ERR_PLATFORM: u32 = REP_ERR_BIT | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_ERR_BIT | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR_BIT | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_ERR_BIT | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_ERR_BIT | 8;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR_BIT | 9;

// NBD_REP_INFO information types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

// Structured reply flags and types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Per the spec this is 5 (not 3 as some implementations wrongly use).
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

// base:allocation status flags.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// Name of the only metadata context we implement.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// Maximum string length the spec allows (export names, queries, messages).
pub const MAX_STRING_LEN: usize = 4096;

/// Sizes of fixed-length messages.
pub const REQUEST_HEADER_LEN: usize = 28;
pub const OPTION_HEADER_LEN: usize = 16;
pub const SIMPLE_REPLY_HEADER_LEN: usize = 16;
pub const STRUCTURED_REPLY_HEADER_LEN: usize = 20;

/// NBD error values (the only ones the protocol allows on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum NbdErrno {
    Perm = 1,
    Io = 5,
    NoMem = 12,
    Inval = 22,
    NoSpc = 28,
    Overflow = 75,
    NotSup = 95,
    Shutdown = 108,
}

impl NbdErrno {
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Map a device error to an NBD error value.
    pub fn from_io(e: &io::Error) -> Self {
        #[cfg(target_os = "linux")]
        if let Some(raw) = e.raw_os_error() {
            // EPERM, EACCES, EROFS / ENOSPC, EFBIG, EDQUOT / ENOMEM / EINVAL
            match raw {
                1 | 13 | 30 => return NbdErrno::Perm,
                27 | 28 | 122 => return NbdErrno::NoSpc,
                12 => return NbdErrno::NoMem,
                22 => return NbdErrno::Inval,
                _ => {}
            }
        }
        match e.kind() {
            io::ErrorKind::PermissionDenied => NbdErrno::Perm,
            io::ErrorKind::InvalidInput => NbdErrno::Inval,
            io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
            | io::ErrorKind::FileTooLarge => NbdErrno::NoSpc,
            // ENOMEM is discouraged by the spec; the client should retry on EIO anyway.
            io::ErrorKind::OutOfMemory => NbdErrno::NoMem,
            // ENOTSUP is reserved for fast-zero, so an unsupported op is EINVAL.
            io::ErrorKind::Unsupported => NbdErrno::Inval,
            _ => NbdErrno::Io,
        }
    }
}

/// Errors from parsing client messages. These are protocol violations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    #[error("extended request headers were not negotiated")]
    ExtendedHeaderNotNegotiated,
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    #[error("option data truncated or malformed")]
    Malformed,
    #[error("string longer than {MAX_STRING_LEN} bytes")]
    StringTooLong,
    #[error("string is not valid UTF-8 or contains NUL")]
    BadString,
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// A transmission-phase request header (compact form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

pub fn parse_request_header(b: &[u8; REQUEST_HEADER_LEN]) -> Result<RequestHeader, WireError> {
    let magic = be_u32(&b[0..4]);
    if magic == EXTENDED_REQUEST_MAGIC {
        return Err(WireError::ExtendedHeaderNotNegotiated);
    }
    if magic != REQUEST_MAGIC {
        return Err(WireError::BadRequestMagic(magic));
    }
    Ok(RequestHeader {
        flags: be_u16(&b[4..6]),
        command: be_u16(&b[6..8]),
        cookie: be_u64(&b[8..16]),
        offset: be_u64(&b[16..24]),
        len: be_u32(&b[24..28]),
    })
}

pub fn encode_request_header(h: &RequestHeader) -> [u8; REQUEST_HEADER_LEN] {
    let mut b = [0u8; REQUEST_HEADER_LEN];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&h.flags.to_be_bytes());
    b[6..8].copy_from_slice(&h.command.to_be_bytes());
    b[8..16].copy_from_slice(&h.cookie.to_be_bytes());
    b[16..24].copy_from_slice(&h.offset.to_be_bytes());
    b[24..28].copy_from_slice(&h.len.to_be_bytes());
    b
}

/// Header of a client option during haggling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

pub fn parse_option_header(b: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, WireError> {
    let magic = be_u64(&b[0..8]);
    if magic != IHAVEOPT {
        return Err(WireError::BadOptionMagic(magic));
    }
    Ok(OptionHeader {
        option: be_u32(&b[8..12]),
        len: be_u32(&b[12..16]),
    })
}

/// Server greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn encode_greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// A cursor over option data that never reads past the end.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.data.len() < n {
            return Err(WireError::Malformed);
        }
        let (h, t) = self.data.split_at(n);
        self.data = t;
        Ok(h)
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        self.take(2).map(be_u16)
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        self.take(4).map(be_u32)
    }
    /// A string prefixed by a 32-bit length.
    fn string32(&mut self) -> Result<String, WireError> {
        let len = self.u32()? as usize;
        if len > MAX_STRING_LEN {
            return Err(WireError::StringTooLong);
        }
        parse_string(self.take(len)?)
    }
}

/// Validate an NBD string: UTF-8, no NUL, at most 4096 bytes.
pub fn parse_string(b: &[u8]) -> Result<String, WireError> {
    if b.len() > MAX_STRING_LEN {
        return Err(WireError::StringTooLong);
    }
    let s = std::str::from_utf8(b).map_err(|_| WireError::BadString)?;
    if s.contains('\0') {
        return Err(WireError::BadString);
    }
    Ok(s.to_owned())
}

/// Payload of NBD_OPT_INFO / NBD_OPT_GO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRequest {
    pub name: String,
    pub info_requests: Vec<u16>,
}

pub fn parse_export_request(data: &[u8]) -> Result<ExportRequest, WireError> {
    let mut c = Cursor { data };
    let name = c.string32()?;
    let n = c.u16()? as usize;
    if c.data.len() != n * 2 {
        return Err(WireError::Malformed);
    }
    let mut info_requests = Vec::with_capacity(n);
    for _ in 0..n {
        info_requests.push(c.u16()?);
    }
    Ok(ExportRequest {
        name,
        info_requests,
    })
}

/// Payload of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export: String,
    pub queries: Vec<String>,
}

pub fn parse_meta_context_request(data: &[u8]) -> Result<MetaContextRequest, WireError> {
    let mut c = Cursor { data };
    let export = c.string32()?;
    let n = c.u32()? as usize;
    // Each query needs at least 4 bytes, so bound the allocation by the data we hold.
    let mut queries = Vec::with_capacity(n.min(c.data.len() / 4));
    for _ in 0..n {
        queries.push(c.string32()?);
    }
    if !c.data.is_empty() {
        return Err(WireError::Malformed);
    }
    Ok(MetaContextRequest { export, queries })
}

/// One option reply message (fixed newstyle).
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[u8]) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

pub fn encode_simple_reply_header(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

pub fn encode_chunk_header(out: &mut Vec<u8>, flags: u16, ty: u16, cookie: u64, len: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// A structured error chunk; `offset` selects NBD_REPLY_TYPE_ERROR_OFFSET.
pub fn encode_error_chunk(
    out: &mut Vec<u8>,
    cookie: u64,
    err: NbdErrno,
    msg: &str,
    offset: Option<u64>,
    done: bool,
) {
    // Truncate on a char boundary so the message stays valid UTF-8.
    let mut end = msg.len().min(MAX_STRING_LEN);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &msg.as_bytes()[..end];
    let (ty, extra) = match offset {
        Some(_) => (REPLY_TYPE_ERROR_OFFSET, 8),
        None => (REPLY_TYPE_ERROR, 0),
    };
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    encode_chunk_header(out, flags, ty, cookie, (6 + msg.len() + extra) as u32);
    out.extend_from_slice(&err.code().to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    if let Some(off) = offset {
        out.extend_from_slice(&off.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_roundtrip() {
        let h = RequestHeader {
            flags: 3,
            command: CMD_WRITE,
            cookie: 0xdead_beef_0102_0304,
            offset: 1 << 40,
            len: 4096,
        };
        assert_eq!(parse_request_header(&encode_request_header(&h)), Ok(h));
    }

    #[test]
    fn request_header_bad_magic() {
        let mut b = encode_request_header(&RequestHeader {
            flags: 0,
            command: 0,
            cookie: 0,
            offset: 0,
            len: 0,
        });
        b[0] ^= 1;
        assert!(matches!(
            parse_request_header(&b),
            Err(WireError::BadRequestMagic(_))
        ));
        b[0..4].copy_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
        assert_eq!(
            parse_request_header(&b),
            Err(WireError::ExtendedHeaderNotNegotiated)
        );
    }

    #[test]
    fn export_request_parsing() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_NAME.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let r = parse_export_request(&d).unwrap();
        assert_eq!(r.name, "abc");
        assert_eq!(r.info_requests, vec![INFO_NAME, INFO_BLOCK_SIZE]);
        // Trailing garbage, truncation and oversize name lengths are rejected.
        let mut bad = d.clone();
        bad.push(0);
        assert!(parse_export_request(&bad).is_err());
        assert!(parse_export_request(&d[..d.len() - 1]).is_err());
        let mut huge = d.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_export_request(&huge).is_err());
    }

    #[test]
    fn meta_request_parsing() {
        let mut d = Vec::new();
        d.extend_from_slice(&0u32.to_be_bytes());
        d.extend_from_slice(&2u32.to_be_bytes());
        for q in ["base:", "base:allocation"] {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        let r = parse_meta_context_request(&d).unwrap();
        assert_eq!(r.export, "");
        assert_eq!(r.queries, vec!["base:", "base:allocation"]);
        // A huge query count with no data must not allocate or succeed.
        let mut bad = Vec::new();
        bad.extend_from_slice(&0u32.to_be_bytes());
        bad.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta_context_request(&bad).is_err());
    }

    #[test]
    fn strings_reject_nul_and_bad_utf8() {
        assert!(parse_string(b"a\0b").is_err());
        assert!(parse_string(&[0xff]).is_err());
        assert!(parse_string(&vec![b'a'; MAX_STRING_LEN + 1]).is_err());
    }

    #[test]
    fn error_mapping() {
        assert_eq!(
            NbdErrno::from_io(&io::Error::from_raw_os_error(28)),
            NbdErrno::NoSpc
        );
        assert_eq!(
            NbdErrno::from_io(&io::Error::from(io::ErrorKind::PermissionDenied)),
            NbdErrno::Perm
        );
        assert_eq!(NbdErrno::from_io(&io::Error::other("x")), NbdErrno::Io);
    }

    #[test]
    fn error_chunk_layout() {
        let mut v = Vec::new();
        encode_error_chunk(&mut v, 7, NbdErrno::Inval, "bad", Some(512), true);
        assert_eq!(v.len(), 20 + 6 + 3 + 8);
        assert_eq!(be_u16(&v[4..6]), REPLY_FLAG_DONE);
        assert_eq!(be_u16(&v[6..8]), REPLY_TYPE_ERROR_OFFSET);
        assert_eq!(be_u32(&v[16..20]), 17);
        assert_eq!(be_u32(&v[20..24]), 22);
    }
}
